"""One dynamic partition per import batch; its key is the batch ID."""

import dagster as dg

batches = dg.DynamicPartitionsDefinition(name="batches")
