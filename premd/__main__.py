from premd.cli import main

main()
