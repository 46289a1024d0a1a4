import {homedir} from 'node:os'
import {isAbsolute, join, resolve} from 'node:path'
import {errnoOf, UsageError, VolumeIoError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {checkTrusted} from './trust.js'

/** The state directory for root (DESIGN §3). */
export const ROOT_STATE_DIR = '/var/lib/clonectl'

/**
 * Where clonectl keeps its state (DESIGN §3), as an absolute path: the --state-dir flag, else
 * $CLONECTL_STATE_DIR, else /var/lib/clonectl when running as root, else
 * $XDG_STATE_HOME/clonectl, else ~/.local/state/clonectl. A relative $XDG_STATE_HOME is
 * ignored, as the XDG base directory spec requires. Pure: touches no file.
 */
export function resolveStateDir(flag?: string, env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  if (flag) return resolve(flag)
  if (env.CLONECTL_STATE_DIR) return resolve(env.CLONECTL_STATE_DIR)
  if (uid === 0) return ROOT_STATE_DIR
  const xdg = env.XDG_STATE_HOME
  const base = xdg && isAbsolute(xdg) ? xdg : join(env.HOME || homedir(), '.local', 'state')
  return join(base, 'clonectl')
}

/**
 * Create the state directory and its groups/ directory, mode 0700 (a directory that already
 * exists keeps its mode), and refuse them (UntrustedStateError) unless they are the running
 * user's and writable by no one else, groups/ not a symlink (DESIGN §3: the state directory
 * is a trust boundary; the path named for it may itself be a symlink). Waits.
 */
export async function ensureStateDir(fs: DurableFs, dir: string): Promise<void> {
  try {
    await fs.mkdirp(join(dir, 'groups'), 0o700)
  } catch (error) {
    throw stateWriteError(dir, join(dir, 'groups'), error)
  }
  await checkTrusted(fs, dir, 'directory', {follow: true})
  await checkTrusted(fs, join(dir, 'groups'), 'directory')
}

/**
 * The error for a failed write of the state directory: a full (ENOSPC, EDQUOT), read-only
 * or failing file system is an expected VolumeIoError (exit 8) naming the state directory;
 * anything else is returned as it is. (A recursive mkdir on a full file system may say
 * ENOENT.) Pure.
 */
export function stateWriteError(stateDir: string, path: string, error: unknown): unknown {
  const code = errnoOf(error)
  const why: Record<string, string> = {
    ENOSPC: 'no space left on the file system of the state directory',
    EDQUOT: 'the disk quota of the state directory is exhausted',
    EROFS: 'the state directory is on a read-only file system',
    EIO: 'an I/O error on the file system of the state directory',
    ENOENT: 'a directory on the way vanished, or the file system of the state directory is full',
  }
  if (code === undefined || !(code in why)) return error
  return new VolumeIoError(`cannot write ${path}: ${why[code]} ${stateDir} (${code}); the state was left as it was`, code, `free space on (or repair) the file system holding ${stateDir}, then run the command again`)
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const NAME_RULE = '1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit'

/** True when `name` is a valid group or clone name. */
export function isValidName(name: string): boolean {
  return NAME.test(name)
}

/**
 * Check a group or clone name: 1–64 characters of [A-Za-z0-9._-], the first a letter or
 * digit (so a name is always a plain file name: no "/", never "." or ".."). Throws a
 * UsageError naming the value and the rule.
 */
export function validateName(kind: 'group' | 'clone', name: string): void {
  if (!NAME.test(name))
    throw new UsageError(`${kind} name ${JSON.stringify(name)} is not valid: a ${kind} name is ${NAME_RULE}`, `pick a ${kind} name of ${NAME_RULE}`)
}
