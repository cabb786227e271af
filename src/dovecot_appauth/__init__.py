"""dovecot-appauth: app passwords and login auditing for Dovecot's checkpassword passdb."""

__version__ = "0.1.0"
