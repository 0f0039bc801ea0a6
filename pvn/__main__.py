from pvn.console import entry

entry()
