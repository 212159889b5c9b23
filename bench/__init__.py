"""The benchmark of the gateway against its floors (see bench/README.md).

`python bench/run.py` (or `python -m bench.run`) is the command; the modules:

- `common`: constants shared by the bench (units, credentials, ssh options), size parsing
- `files`: the generated PDFs to upload and their SHA-256
- `measure`: CPU, RSS and wall readings from /proc and getrusage; medians and summaries
- `servers`: starting and stopping SeaweedFS, OpenSSH's sshd and the gateway
- `clients`: OpenSSH `sftp` sessions (plain, and traced with `-vvv` for tail latency)
- `phases`: one module per benchmark phase, sharing the `Bench` context
- `report`: run metadata, the printed table and the JSON results file
- `run`: the command line: parse the arguments, start the servers, run the phases
"""
