from itsproxy.proxy.cli import main

raise SystemExit(main())
