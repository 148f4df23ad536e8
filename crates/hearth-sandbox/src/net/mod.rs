//! Networking of a sandbox: its namespace, links, addresses and firewall.
