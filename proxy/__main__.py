import sys

from proxy import cli

sys.exit(cli.main(sys.argv[1:]))
