from dynacheck.cli import main

main()
