"""Differential testing of KVM's instruction emulator: one instruction form, identical inputs, run
natively (CPL3, operand in RAM), through KVM's emulator (operand in MMIO; behind KVM's forced-
emulation prefix where the kvm module allows it; and at CPL0 on a host that emulates CPL0 code),
and by a reference model (Unicorn); the results must agree on what the SDM defines.

  forms.py        the form table (mnemonic x shape x operand size x code size)
  instruction.py  a form assembled: bytes, undefined flags (iced-x86), the immediate's place; the
                  instruction slot (with or without the forced-emulation prefix)
  inputs.py       the inputs and the hypothesis strategies that draw them
  kvm_paths.py    the KVM paths: a guest per (mode, RAM, MMIO or prefix) that runs any instruction
  reference.py    the Unicorn path
  outcome.py      what a path saw; the side-by-side comparison
  check.py        the property: hypothesis drives all paths, a divergence fails shrunk
  profiles.py     hypothesis profiles (kvmtest-fast, kvmtest-deep) and the seed
"""
