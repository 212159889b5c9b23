"""The SFTP front end: paramiko's server types, translating requests and nothing more."""
