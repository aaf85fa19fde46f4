// Package logx holds the agent's log level between info and warning.
package logx

import "log/slog"

// LevelNotice marks the events a farm admin reads at the default
// verbosity: start-up, tasks received and delivered, bootstraps. Holds,
// backoffs and failures are warnings or errors already.
const LevelNotice = slog.LevelInfo + 2
