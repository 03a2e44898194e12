"""Flower settings, for the Procfile and the tests: `celery -A mailq flower --conf=...`.

Flower reads this file as Tornado options (names as on its command line, with underscores).
"""

# The tasks page shows each task's message id(s) (args) and customer (kwargs: routing._send
# publishes the customer as the task's kwargsrepr), so an operator can tell whose mail a task
# carries without opening it.
tasks_columns = "name,uuid,state,args,kwargs,received,runtime,worker"
