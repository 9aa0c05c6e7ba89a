"""Helpers shared by every test folder: real servers (in a thread or as `lossreg serve`),
loss cases with torch references, plugin distributions, the client fake, the KServe manifests."""
