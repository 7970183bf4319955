"""The `engine` command line for operators (talks to the database and the broker directly)."""
