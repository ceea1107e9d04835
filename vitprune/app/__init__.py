"""The command line: argparse, recipes and the error policy over ``vitprune.api`` (no pipeline logic here)."""
