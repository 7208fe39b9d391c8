"""E-mail: messages rendered from Jinja2 templates, sent over SMTP or into a Maildir."""
