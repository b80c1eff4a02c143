from rlhf_tui.cli import main

raise SystemExit(main())
