"""``python -m sceau.cli``."""

from sceau.cli.main import main

main()
