from amc.cli import main

raise SystemExit(main())
