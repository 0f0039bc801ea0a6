from pvn.cli import entry

entry()
