from gallery.cli import cli

cli()
