/**
 * Expected errors: each has a stable code, an exit status and a one-line fix.
 * Anything that is not a ClonectlError is a bug and is reported with its stack.
 *
 * The exit statuses are a contract with scripts (README "Exit codes", clonectl(1)):
 * never renumber one, only add.
 */
import type {VerifyReport} from '../group/Verify.js'

export const ExitCode = {
  ok: 0,
  bug: 1,
  usage: 2,
  notFound: 3,
  lockHeld: 4,
  refused: 5,
  badState: 6,
  corrupt: 7,
  io: 8,
  verifyMismatch: 9,
  drillFailed: 10,
  remote: 11,
  serverStopped: 12,
  interrupted: 130,
} as const
export type ExitCodeName = keyof typeof ExitCode

/**
 * The one table of exit statuses: README "Exit codes" (between its exit-codes markers) and
 * the EXIT STATUS of every man page are generated from it at build time (src/ui/manPages.ts),
 * and test/integration/exitCodes.test.ts provokes each row for real.
 */
export const exitCodeMeanings: Record<ExitCodeName, string> = {
  ok: 'Success (also when the end state already held: "already synchronized", "already fractured").',
  bug: 'An internal error (a bug): reported with its stack; also INVALID_TRANSITION, a clone state change the state machine does not allow (refused before anything changed).',
  usage: 'Bad command line: an unknown command (with the nearest one suggested) or flag, a missing argument, a bad size or name, a path that is a directory or another non-volume where a volume is expected.',
  notFound: 'No such group, clone or volume.',
  lockHeld: 'The group is locked by another clonectl (its pid, command and start time are named); use --wait.',
  refused: 'Refused as unsafe: the clone is the source under another name, is used by a group (checked at every open: both uses named), is smaller than the source, is busy or mounted (or a file under a busy loop device); or not confirmed.',
  badState: 'Not allowed in the current state: restoring from an out-of-sync or untrusted clone without --force, an interrupted restore pending, fracturing a clone that is not synchronized.',
  corrupt: 'Persistent state cannot be trusted: a map file or group.json is corrupt, truncated or mismatched, a page of the protected restore map P is damaged, or the state directory or something in it is another user\'s, writable by group or others, or a symlink (named, with the fix).',
  io: 'A volume read, write or open failed (ENOSPC, EIO, EACCES, an immutable file), or the state directory\'s file system is full or failing (named).',
  verifyMismatch: 'verify found extents that differ while their delta bit is clear.',
  drillFailed: 'A recovery drill failed one of its checks.',
  remote: 'A remote (NBD) clone failed: unreachable, TLS or handshake refused, connection lost, a request timed out or was answered with an error.',
  serverStopped: 'The clonectl serve process that owns the group, and ran the request, stopped before it finished (killed, or stopping); what it did is durable and an interrupted restore stays recorded.',
  interrupted: 'This command was interrupted by SIGINT or SIGTERM, or its job was cancelled with `clonectl job cancel`; it stopped at a safe point (run it again to go on).',
}

export class ClonectlError extends Error {
  /** Stable machine-readable code, e.g. "LOCK_HELD". */
  readonly code: string
  readonly exitCode: number
  /** One line telling the user what to do next. */
  readonly fix?: string

  constructor(code: string, exit: ExitCodeName, message: string, fix?: string) {
    super(message)
    this.name = new.target.name
    this.code = code
    this.exitCode = ExitCode[exit]
    this.fix = fix
  }
}

export class UsageError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('USAGE', 'usage', message, fix)
  }
}

export class NotFoundError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('NOT_FOUND', 'notFound', message, fix)
  }
}

export class LockHeldError extends ClonectlError {
  constructor(message: string, fix = 'wait for it to finish, or run the command again with --wait (until it is free) or --wait SECONDS') {
    super('LOCK_HELD', 'lockHeld', message, fix)
  }
}

/** The request is understood but would be unsafe: same volume twice, clone too small, in use. */
export class RefusedError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('REFUSED', 'refused', message, fix)
  }
}

/** The group is not in a state that allows the operation (out-of-sync clone, restore pending). */
export class StateError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('BAD_STATE', 'badState', message, fix)
  }
}

/** Persistent state (a map file, group.json) cannot be trusted. Never read as empty. */
export class CorruptStateError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('CORRUPT_STATE', 'corrupt', message, fix)
  }
}

/**
 * The state directory, or something in it, is not the running user's alone (another owner,
 * writable by group or others) or is a symlink: refused as ssh refuses a loose ~/.ssh, since
 * whoever can change it can lead clonectl to write any file. Exit 7, like corrupt state.
 */
export class UntrustedStateError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('UNTRUSTED_STATE', 'corrupt', message, fix)
  }
}

export class VolumeIoError extends ClonectlError {
  readonly errno?: string
  constructor(message: string, errno?: string, fix?: string) {
    super('IO_ERROR', 'io', message, fix)
    this.errno = errno
  }
}

export class VerifyMismatchError extends ClonectlError {
  /** The comparison that found the differences (`verify --json` prints it with the error). */
  readonly report?: VerifyReport
  constructor(message: string, fix = 'run `clonectl verify GROUP CLONE --repair`, then `clonectl clone sync GROUP CLONE`', report?: VerifyReport) {
    super('VERIFY_MISMATCH', 'verifyMismatch', message, fix)
    this.report = report
  }
}

export class DrillFailedError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('DRILL_FAILED', 'drillFailed', message, fix)
  }
}

export class InterruptedError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('INTERRUPTED', 'interrupted', message, fix)
  }
}

/**
 * The job was cancelled by `clonectl job cancel` from another shell: an operator's interrupt
 * (exit 130, like SIGINT), told apart from a serve that stops under a request (12).
 */
export class JobCancelledError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('JOB_CANCELLED', 'interrupted', message, fix)
  }
}

/**
 * The `serve` process that owns the group stopped (a crash, kill -9, SIGTERM to serve) while
 * it ran this command's request. Not 130: this command got no signal.
 */
export class ServerStoppedError extends ClonectlError {
  constructor(message: string, fix?: string) {
    super('SERVER_STOPPED', 'serverStopped', message, fix)
  }
}

/**
 * An NBD remote (a clone at nbd://…) failed: it cannot be reached, the handshake or TLS
 * failed, the connection broke, a request timed out, or the server answered a request
 * with an error. The message names the URI; `errno` is the NBD error (EIO, ENOSPC,
 * EPERM…) when the server sent one, so an export backed by this volume passes it on.
 */
export class RemoteError extends ClonectlError {
  readonly errno?: string
  /** What went wrong, for callers that retry or tests: stable words, not prose. */
  readonly reason: RemoteErrorReason
  constructor(message: string, reason: RemoteErrorReason, fix?: string, errno?: string) {
    super('REMOTE', 'remote', message, fix)
    this.reason = reason
    this.errno = errno
  }
}
export type RemoteErrorReason = 'connect' | 'timeout' | 'handshake' | 'tls' | 'lost' | 'reply' | 'protocol' | 'closed' | 'read-only'

/**
 * A clone state change that the state machine's table does not allow (src/store/cloneStates.ts):
 * a bug in clonectl, never the user's doing, so it exits as one; nothing was changed.
 */
export class InvalidTransitionError extends ClonectlError {
  constructor(message: string) {
    super('INVALID_TRANSITION', 'bug', message, 'nothing was changed; report this as a bug in clonectl, with the command and `clonectl status --json`')
  }
}

export function isClonectlError(e: unknown): e is ClonectlError {
  return e instanceof ClonectlError
}

/** errno code of a Node system error, if any. */
export function errnoOf(e: unknown): string | undefined {
  if (e && typeof e === 'object' && 'code' in e && typeof (e as {code: unknown}).code === 'string') {
    return (e as {code: string}).code
  }
  return undefined
}
