from kvmdbg.cli import main

raise SystemExit(main())
