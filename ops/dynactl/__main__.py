from dynactl.cli import main

main()
