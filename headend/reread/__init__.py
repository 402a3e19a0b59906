"""Re-reads (补抄): ask meters again for the load points they missed, as tracked tasks."""
