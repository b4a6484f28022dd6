"""Entry point of onnxfix's child processes: ``python -m onnxfix.training._child TASK JOB RESULT STAGE``."""

import sys

from onnxfix.training.isolation import child_main

sys.exit(child_main(*sys.argv[1:5]))
