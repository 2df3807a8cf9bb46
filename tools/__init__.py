"""Developer tools run from the repository (proto generation, test and benchmark helpers); not part of any wheel."""
