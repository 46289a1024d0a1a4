/**
 * The state directory is a trust boundary (DESIGN §3): it and everything in it belong to the
 * user running clonectl and are writable by no one else, and no symlink inside it is
 * followed. Whoever could change group.json or plant a symlink there could lead clonectl
 * (often root) to sync into any file; so such state is refused with UntrustedStateError
 * (exit 7), naming the path, what was found and the fix, as ssh refuses a loose ~/.ssh.
 *
 * The checks are lstat-based and run before anything in a group directory is read: once
 * the state directory, groups/ and the group directory are ours and closed to others, no
 * one else can swap an entry for a symlink between the check and the open.
 */
import {errnoOf, UntrustedStateError} from '../errors/errors.js'
import type {DurableFs, LinkStat} from '../io/DurableFs.js'

/** The uid clonectl runs as (undefined where there are no uids). */
function me(): number | undefined {
  return process.geteuid?.()
}

export interface TrustOptions {
  /** A directory clonectl itself made with the umask's mode (the lock's): only owner and symlink count. */
  ignoreMode?: boolean
  /** The state directory itself: the path the user named may be a symlink (its target is checked). */
  follow?: boolean
}

/**
 * Refuse `path` unless it is owned by the running user, not writable by group or others,
 * and not a symlink. Missing: fine (nothing to trust). Waits (one lstat). No-op on a
 * DurableFs without lstat (MemoryFs).
 */
export async function checkTrusted(fs: DurableFs, path: string, kind: 'directory' | 'file', o: TrustOptions = {}): Promise<void> {
  if (!fs.lstat) return
  let st: LinkStat
  try {
    st = await fs.lstat(o.follow ? await fs.realpath(path) : path)
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return
    throw error
  }
  if (st.isSymlink)
    throw new UntrustedStateError(
      `${path} is a symlink; clonectl never follows a symlink inside its state directory`,
      `remove the symlink and put the real ${kind} there (or restore the state from a backup)`,
    )
  const uid = me()
  if (uid !== undefined && st.uid !== uid)
    throw new UntrustedStateError(
      `${path} is owned by uid ${st.uid}, not by uid ${uid} that runs clonectl; state owned by someone else cannot be trusted`,
      `chown ${kind === 'directory' ? '-R ' : ''}${uid} ${path} if it is yours, or run clonectl as its owner`,
    )
  if (!o.ignoreMode && (st.mode & 0o022) !== 0)
    throw new UntrustedStateError(
      `${path} has mode ${st.mode.toString(8).padStart(4, '0')}: writable by ${(st.mode & 0o020) !== 0 ? 'group' : ''}${(st.mode & 0o022) === 0o022 ? ' and ' : ''}${(st.mode & 0o002) !== 0 ? 'others' : ''}; state others can change cannot be trusted`,
      `chmod ${kind === 'directory' ? '700' : '600'} ${path}`,
    )
}
