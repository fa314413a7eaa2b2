// Package repl runs a long-lived Python interpreter driven by an embedded driver program, one cell
// at a time, with notebook semantics: state persists between cells, a trailing expression becomes
// the result, matplotlib figures and _repr_*_ methods become rich outputs, and an interrupt stops
// the cell while keeping the state.
//
// # Process layout
//
// The interpreter is started as `python -c <bootstrap>` in its own process group. The bootstrap
// reads the driver source (driver.py, embedded as Driver) from fd 5 and executes it. The driver
// moves the protocol pipes to high close-on-exec fds (≥ 100) before any user code runs:
//
//	fd 0   /dev/null                user code reading stdin gets EOF
//	fd 1   stdout pipe              user output, C extensions and subprocesses included
//	fd 2   stderr pipe
//	fd 3   command pipe (read)      Go → driver frames; moved to fd ≥ 100, then closed
//	fd 4   reply pipe (write)       driver → Go frames; moved to fd ≥ 100, then closed
//	fd 5   driver source (read)     read to EOF by the bootstrap, then closed
//
// # Frames
//
// Both pipes carry frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//
//	Go                                         driver
//	{"op":"ping"}                      ──────►
//	                                   ◄────── {"op":"pong","pid":…,"version":"3.11.2"}
//	{"op":"run","code":…,"limit":…,
//	 "display_limit":…,"display_items":…,
//	 "nonce":…}                        ──────►
//	                                   ◄────── {"op":"started","nonce":…}    user phase begins
//	          … user output on fds 1 and 2 …
//	          marker on fd 1, marker on fd 2                                 user phase over
//	                                   ◄────── {"op":"done","nonce":…,"token":…,"marked":[true,true],
//	                                            "result"?:…,"display":[{"mime","data","b64"?}],
//	                                            "display_dropped":…,
//	                                            "error"?:{"name","value","traceback"},
//	                                            "interrupted":…,"execution_time":seconds}
//
// The nonce is fresh random per cell. Cell code can write frames to the reply pipe itself (it
// shares the driver's process), so Go takes only frames carrying the cell's nonce; the previous
// cell's late "done" (its forged one having been taken) is recognised by that cell's nonce and
// the output up to its markers dropped, so a forgery affects at most the cell that made it.
//
// Display items: at most display_items (256) and display_limit bytes per cell. Text types
// (text/*, *json: IsText) carry UTF-8 without control characters and never base64; every other
// type is binary, base64 when "b64" is set. The driver drops what breaks the rules (counting it
// in display_dropped, with a note on stderr) and Go checks every item again.
//
// A marker is "\x1e\x1fairlock-end:" + token + "\x1f\x1e", where token is 32 hex digits from
// os.urandom drawn after the cell has finished, so no output of the cell can contain it. Each
// stream's pump records every marker-shaped sequence with its offset, scanning across read
// boundaries; when the reply names the token, the cell's output is everything before that marker
// (fake markers the user printed stay in it as text) and bytes after it belong to the next cell.
// "marked" says whether the driver managed to write each marker; for an unmarked stream, or if
// the marker does not show up within a short wait, the output is cut at what has arrived.
// Output past Config.OutputLimit is read and discarded so the writer never blocks.
//
// # Cells
//
// Each cell is compiled as <cell-N> (registered in linecache, so tracebacks show its lines, and
// stripped of driver frames) in one persistent __main__ namespace. A trailing expression is
// evaluated separately and its repr is the result, unless it is None or the cell ends with ";".
// Top-level await runs on a persistent event loop. Rich outputs come from display() (a builtin),
// from the result's _repr_*_ methods and from matplotlib: pyplot.show() and the end of the cell
// save every open figure as PNG and close it. Before each cell, and again before the markers, the
// driver reinstalls its own sys.stdin/stdout/stderr and points fds 0, 1 and 2 back at /dev/null
// and the pipes, so a cell that closed or replaced them does not break the next one.
//
// # Interrupts
//
// Between cells and in the driver's own code after a cell, the driver ignores SIGINT. It raises
// KeyboardInterrupt only during the user phase, which it announces with "started" before any user
// code runs; Go sends SIGINT (for Interp.Interrupt, a timeout or a cancelled ctx) only after
// "started", so an early interrupt is never lost. If the cell has not finished
// Config.InterruptGrace after the request, Go kills the process group and starts a new
// interpreter.
//
// # States of an Interp
//
//	running ──Run──► in cell ──done──► running
//	                 in cell ──died / not interruptible──► restarting ──► running (fresh state)
//	any ──Close──► closed
//
// An interpreter that dies between cells (a background thread calling os._exit) is restarted by
// the next Run, which reports Restarted.
package repl
