"""Training of vidstyle's style networks (Johnson et al. 2016): `vidstyle train` or `python -m vidstyle.trainer`."""
