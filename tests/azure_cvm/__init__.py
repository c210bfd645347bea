"""Stand-ins for an Azure CVM: swtpm as its vTPM, the paravisor, the metadata service."""

import os

os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss would print to the tests' stderr
