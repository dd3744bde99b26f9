from primerl_modal.cli import main

main()
