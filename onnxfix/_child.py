"""Entry point of onnxfix's child processes: ``python -m onnxfix._child TASK JOB RESULT STAGE``."""

import sys

from onnxfix.isolation import child_main

sys.exit(child_main(*sys.argv[1:5]))
