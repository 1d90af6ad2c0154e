import sys

from proxy import cli

cli.reexec_optimized(sys.argv[1:])
sys.exit(cli.main(sys.argv[1:]))
