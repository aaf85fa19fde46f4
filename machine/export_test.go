package machine

// SetConsoleClientQueueMax lowers the console clients' queue bound for the
// external tests (a guest floods its console in seconds, not minutes) and
// returns the restore.
func SetConsoleClientQueueMax(n int) (restore func()) {
	old := consoleClientQueueMax
	consoleClientQueueMax = n
	return func() { consoleClientQueueMax = old }
}
