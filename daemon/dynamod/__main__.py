from dynamod.main import main

main()
