"""The sync agent (`secrets-sync`): a project's secrets as files, kept current from the event topic."""
