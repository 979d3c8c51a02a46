"""Reports: JUnit with the host fingerprint, KTAP, run comparison."""
