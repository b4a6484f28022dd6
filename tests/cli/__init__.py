"""The command line as a user runs it: start-up, exit statuses, the README's walkthrough."""
