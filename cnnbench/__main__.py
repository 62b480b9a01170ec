from cnnbench.cli import main

raise SystemExit(main())
