from onnxfix.cli import main

main()
