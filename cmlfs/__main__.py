from cmlfs.cli import main

raise SystemExit(main())
