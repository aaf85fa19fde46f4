package agent

// ConfigError is an option the host does not fit, found at start: a bridge
// that is missing or has no usable address, an unreadable --auth-key, an
// unknown --qemu-user, a state or run directory that cannot be created, an
// instance another process claims. The options parse, but the admin must
// change the host or the configuration; cmd/bbot-agent exits with
// EX_CONFIG for it. Its message is the wrapped error's, which names the
// option.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }
