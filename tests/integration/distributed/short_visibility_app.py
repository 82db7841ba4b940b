"""A worker app whose Redis visibility timeout (2 s) is far SHORTER than the job it runs.

make_celery refuses that configuration; this module builds a correct app and then overrides it, to
prove that even when a message is redelivered while its job still runs, the ledger's lease keeps the
second delivery from executing the job.
"""

from common.settings import load_settings
from workers.celery_app import make_celery

app = make_celery(load_settings().check())
_options = {"visibility_timeout": 2, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
app.conf.broker_transport_options = _options
app.conf.result_backend_transport_options = _options
