/**
 * One lock per clone group: whoever holds it may change the group's state and volumes.
 *
 * Notes on the design
 *
 * Files, all inside groups/NAME/:
 * - `lock/`             the lock: a directory made atomically by proper-lockfile (mkdir),
 *                       whose mtime the holder refreshes every UPDATE_MS;
 * - `lock.holder.json`  who holds it (pid, command, start time, host), written by the holder
 *                       right after it takes the lock, removed on release; advisory: never
 *                       fsynced (after a power loss every holder is gone anyway);
 * - `lock.gate/`        a short-lived proper-lockfile lock held only while acquiring (below).
 *
 * Timing (DESIGN §3). Staleness is judged by the *acquirer*, against the holder's refresh
 * rate, so every invocation must use the same STALE_MS; that is why both are constants here
 * and not options. A holder refreshes its lock every UPDATE_MS (10 s) from a timer on the
 * event loop, so a live holder's lock is never older than ~10 s; another process declares it
 * stale only after STALE_MS (60 s), i.e. after six missed refreshes. The event loop must
 * therefore never be blocked for anything near 50 s (the engine does I/O asynchronously or in
 * workers, and fsyncs in bounded chunks). If it ever is, proper-lockfile notices that the lock
 * was not refreshed in time (or was taken) and calls onCompromised: the command stops
 * acknowledging writes, stops at a safe point and exits non-zero; the on-disk state is
 * crash-safe either way. A shorter stale would let a slow disk or a paused VM steal a live
 * lock; a longer one would make recovery after a crash on another host (where pids cannot be
 * checked) slower.
 *
 * Prompt takeover. A process killed with SIGKILL leaves `lock/` behind, and waiting a minute
 * before a restore can resume is too long. So when the holder file names a pid on this host
 * that no longer exists (kill(pid, 0) → ESRCH, a zombie not yet reaped by its parent, a
 * process of an earlier boot, or the pid reused by a process started at another time: the
 * holder file records the boot id and the pid's start time), the lock is taken over at once and
 * onStaleTakeover is called (the command prints a warning). A lock whose holder is on another
 * host, or unknown, is taken over only once it is STALE_MS old.
 *
 * Why the gate. Removing a stale lock and making a new one are two steps. With two takers A
 * and B that both judged the lock stale, A may remove it and make its own before B removes
 * "the stale lock" — which is now A's — and makes one too: two holders. proper-lockfile's own
 * stale handling has the same window. So every acquisition (check, removal of a stale lock,
 * mkdir, holder file) runs under `lock.gate/`, a second proper-lockfile lock held for a few
 * milliseconds. Under the gate the holder file always describes the process that made
 * `lock/` (or is a leftover of a process that is gone), so "the holder is dead" really means
 * "the lock is abandoned". Release takes the gate too (holder file, then `lock/`), so under
 * the gate a `lock/` without a holder file was left by a process killed between those two
 * steps while taking or releasing the lock: it is abandoned as well, and taken over at once
 * (before, it blocked the group for STALE_MS and status called the dead process running).
 * Outside the gate locks are only ever removed (release without a gate, exit). The
 * gate itself goes stale after GATE_STALE_MS; the residual risk is two processes both taking
 * over a gate abandoned by a process killed in those milliseconds, at the same moment as a
 * takeover of the main lock.
 */
// fs.promises, read at each call: node:fs/promises loads on first use (see NodeDurableFs).
import {mkdirSync, promises as fsp, readFileSync, realpathSync, renameSync, rmdirSync, statSync, unlinkSync, utimesSync, writeFileSync} from 'node:fs'
import {hostname} from 'node:os'
import {basename, join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {errnoOf, LockHeldError, NotFoundError} from '../errors/errors.js'
import {metadataOnCallingThread} from '../io/loopPolicy.js'
import {randomHex} from '../io/randomId.js'
import {stateWriteError} from './stateDir.js'

/**
 * Remove a file that may already be gone. (fs.rm with force would do, but it loads Node's
 * rimraf, ~0.3 ms, at every lock release.)
 */
async function unlinkIfPresent(path: string): Promise<void> {
  try {
    if (metadataOnCallingThread()) unlinkSync(path)
    else await fsp.unlink(path)
  } catch (error) {
    if (errnoOf(error) !== 'ENOENT') throw error
  }
}

type Done<T> = (error: NodeJS.ErrnoException | null, value?: T) => void

/** A synchronous call, its callback made on the next tick as the fs callback API would. */
function onNextTick<T>(call: () => T, done: Done<T>): void {
  let value: T
  try {
    value = call()
  } catch (error) {
    process.nextTick(done, error as NodeJS.ErrnoException)
    return
  }
  process.nextTick(done, null, value)
}

/**
 * The file system proper-lockfile is given: its mkdir, stat, rmdir and utimes on the calling
 * thread where src/io/loopPolicy.ts allows it (a lock and its gate cost 4 thread-pool round
 * trips each way), Node's fs under serve. One object for the process: proper-lockfile caches
 * the file system's mtime precision on it, and without that cache every lock stamps its
 * directory with the next whole second (+5 ms) to probe it, so two locks made within a second
 * carry the same mtime and a holder no longer sees its lock taken from under it.
 */
function lockfileFs(): {fs?: object} {
  return metadataOnCallingThread() ? {fs: syncLockfileFs} : {}
}
const syncLockfileFs = {
  mkdir: (path: string, done: Done<void>) => onNextTick(() => void mkdirSync(path), done),
  rmdir: (path: string, done: Done<void>) => onNextTick(() => rmdirSync(path), done),
  stat: (path: string, done: Done<unknown>) => onNextTick(() => statSync(path), done),
  utimes: (path: string, atime: Date, mtime: Date, done: Done<void>) => onNextTick(() => utimesSync(path, atime, mtime), done),
  realpath: (path: string, done: Done<string>) => onNextTick(() => realpathSync(path), done),
  rmdirSync,
}

/**
 * proper-lockfile (with graceful-fs, which patches fs as it loads, and signal-exit) is
 * loaded when a lock is first taken, not at start: status and the other commands that only
 * read state never take one.
 */
let lockfileModule: Promise<typeof import('proper-lockfile')> | undefined
function properLockfile(): Promise<typeof import('proper-lockfile')> {
  return (lockfileModule ??= import('proper-lockfile').then((m) => m.default))
}

/** Every invocation's stale threshold for a group lock (see the notes above). */
export const STALE_MS = 60_000
/** How often a holder refreshes its lock's mtime. */
export const UPDATE_MS = 10_000
/** The acquisition gate is held for milliseconds; a gate older than this was abandoned. */
const GATE_STALE_MS = 10_000
/** How often a waiting acquirer tries again. */
const POLL_MS = 250

/** Who holds a group lock. */
export interface HolderInfo {
  /** 0 when unknown (a lock with no readable holder file). */
  pid: number
  /** The command line, e.g. "clonectl clone sync db1 c1". */
  command: string
  /** ISO 8601, seconds precision. */
  startedAt: string
  hostname: string
}

interface HolderFile extends HolderInfo {
  /** Unique per acquisition, so a release never removes a later holder's file. */
  token: string
  /** The holder's kernel boot (Linux boot_id), so a lock left before a reboot is known abandoned. */
  bootId?: string
  /** The holder's start time in clock ticks since boot (/proc/PID/stat), so a reused pid is not taken for it. */
  pidStart?: string
}

export interface AcquireOptions {
  groupDir: string
  /** The group's name, for messages. */
  group: string
  /** The command line, recorded in the holder file and shown to whoever finds the lock held. */
  command: string
  /** undefined or 0: fail fast; otherwise seconds to wait (Infinity: forever). */
  waitSeconds?: number
  /** The lock was lost (not refreshed in time, or taken): stop at a safe point, exit non-zero. */
  onCompromised: (err: Error) => void
  /** Called once the lock of a holder that is gone has been taken over. */
  onStaleTakeover?: (holder: HolderInfo) => void
  /** Told when a wait for a held lock begins (so the user is not left in silence); returns what ends the notice. */
  onWait?: (what: string) => () => void
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists, as another user.
    return errnoOf(error) !== 'ESRCH'
  }
}

/** This kernel boot's id (Linux); undefined elsewhere. */
async function bootId(): Promise<string | undefined> {
  // It cannot change while this process lives; /proc reads never wait on a disk.
  if (boot === null) {
    try {
      boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined
    } catch {
      boot = undefined
    }
  }
  return boot
}
let boot: string | undefined | null = null

/**
 * A process's state letter and start time from /proc/PID/stat: 'gone' when it has no entry
 * any more, undefined where there is no /proc to ask.
 */
async function procStat(pid: number): Promise<{state: string; start: string} | 'gone' | undefined> {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch (error) {
    if (errnoOf(error) === 'ENOENT' && (await bootId()) !== undefined) return 'gone'
    return undefined
  }
  // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
  return f.length > 19 ? {state: f[0]!, start: f[19]!} : undefined
}

/**
 * The holder is a process of this host that no longer exists: a process of an earlier boot,
 * a pid with no process, a zombie (killed and not yet reaped by its parent: kill(pid, 0)
 * still succeeds for it, which made a serve restarted right after a SIGKILL find the lock
 * "held" by the dead process), or a pid reused by a process that started at another time.
 */
async function deadHere(h: HolderFile): Promise<boolean> {
  if (h.pid <= 0 || h.hostname !== hostname()) return false
  const boot = await bootId()
  if (h.bootId && boot && h.bootId !== boot) return true
  if (!alive(h.pid)) return true
  const st = await procStat(h.pid)
  if (st === 'gone') return true
  if (!st) return false
  if (st.state === 'Z' || st.state === 'X' || st.state === 'x') return true
  return h.pidStart !== undefined && (!h.bootId || h.bootId === boot) && st.start !== h.pidStart
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z')
}

/** "pid 4242 (clonectl clone sync db1 c1) since 2026-11-23T05:40:00Z", for messages. */
export function describeHolder(h: HolderInfo | undefined): string {
  if (!h || h.pid === 0) return 'another clonectl process'
  const host = h.hostname === hostname() ? '' : ` on ${h.hostname}`
  return `pid ${h.pid}${host} (${h.command}) since ${h.startedAt}`
}

async function readHolderFile(groupDir: string): Promise<HolderFile | undefined> {
  let doc: unknown
  try {
    // Synchronous, like NodeDurableFs's metadata reads: a small file, read whole.
    doc = JSON.parse(readFileSync(GroupLock.holderPath(groupDir), 'utf8'))
  } catch {
    return undefined
  }
  if (typeof doc !== 'object' || doc === null) return undefined
  const d = doc as Record<string, unknown>
  if (!Number.isSafeInteger(d.pid) || (d.pid as number) <= 0) return undefined
  if (typeof d.command !== 'string' || typeof d.startedAt !== 'string' || typeof d.hostname !== 'string') return undefined
  const opt = (k: string): string | undefined => (typeof d[k] === 'string' ? (d[k] as string) : undefined)
  return {pid: d.pid as number, command: d.command, startedAt: d.startedAt, hostname: d.hostname, token: opt('token') ?? '', bootId: opt('bootId'), pidStart: opt('pidStart')}
}

/** Someone is taking or releasing the lock now: the gate exists and is not stale. */
async function gateBusy(groupDir: string): Promise<boolean> {
  try {
    return (await fsp.stat(GroupLock.gatePath(groupDir))).mtimeMs >= Date.now() - GATE_STALE_MS
  } catch {
    return false
  }
}

/**
 * mtime of the lock directory in ms, or undefined when there is none. A synchronous stat that
 * answers "none" without making an error: status asks it of every group, most of them unlocked,
 * and an ENOENT through the thread pool cost ~0.4 ms each (see NodeDurableFs's metadata reads).
 */
async function lockMtime(groupDir: string): Promise<number | undefined> {
  return statSync(GroupLock.lockPath(groupDir), {throwIfNoEntry: false})?.mtimeMs
}

function publicHolder(h: HolderFile): HolderInfo {
  return {pid: h.pid, command: h.command, startedAt: h.startedAt, hostname: h.hostname}
}

export class GroupLock {
  /** The group locks this process holds, by resolved group directory. */
  private static readonly heldHere = new Map<string, GroupLock>()
  private released = false
  private compromised = false
  private removeDirOnRelease = false

  private constructor(
    readonly groupDir: string,
    private readonly releaseFn: () => Promise<void>,
    private readonly holderFile: HolderFile,
  ) {}

  static lockPath(groupDir: string): string {
    return join(groupDir, 'lock')
  }

  static holderPath(groupDir: string): string {
    return join(groupDir, 'lock.holder.json')
  }

  static gatePath(groupDir: string): string {
    return join(groupDir, 'lock.gate')
  }

  /** True for the names GroupLock makes in a group directory (for GroupStore.destroy). */
  static ownsName(name: string): boolean {
    return name === 'lock' || name === 'lock.gate' || name === 'lock.holder.json' || name.startsWith('lock.holder.json.tmp-')
  }

  /** The lock this process holds on the group directory, if any. */
  static heldBy(groupDir: string): GroupLock | undefined {
    return GroupLock.heldHere.get(resolve(groupDir))
  }

  /**
   * The group was destroyed under this lock (GroupStore.destroy): release() removes the
   * group directory too, once the lock's own files are gone.
   */
  removeDirectoryOnRelease(): void {
    this.removeDirOnRelease = true
  }

  /** This lock's holder (this process). */
  get holder(): HolderInfo {
    return publicHolder(this.holderFile)
  }

  /**
   * Who holds the group's lock, if a live process does (a lock that is stale, or whose holder
   * is a dead process of this host, counts as free). pid 0 when the lock is held but its
   * holder file is missing while someone is in the gate (between taking the lock and writing
   * it, or releasing it); missing with no one in the gate, the lock was abandoned (see the
   * notes). Takes nothing; waits only for stats and a read.
   */
  static async inspect(groupDir: string): Promise<HolderInfo | undefined> {
    const mtime = await lockMtime(groupDir)
    if (mtime === undefined || mtime < Date.now() - STALE_MS) return undefined
    const h = await readHolderFile(groupDir)
    if (!h) return (await gateBusy(groupDir)) ? {pid: 0, command: '(unknown)', startedAt: isoSeconds(mtime), hostname: '(unknown)'} : undefined
    if (await deadHere(h)) return undefined
    return publicHolder(h)
  }

  /**
   * Take the group lock: fail fast (waitSeconds undefined or 0) with a LockHeldError naming
   * the holder, or poll until waitSeconds have passed. A lock abandoned by a dead process of
   * this host is taken over at once (onStaleTakeover). The group directory must exist. Waits.
   */
  static async acquire(o: AcquireOptions): Promise<GroupLock> {
    const wait = o.waitSeconds ?? 0
    if (!(wait >= 0)) throw new RangeError(`waitSeconds must be ≥ 0 or Infinity, got ${wait}`)
    const started = Date.now()
    const deadline = started + wait * 1000
    let endNotice: (() => void) | undefined
    try {
      for (;;) {
        const got = await GroupLock.attempt(o)
        if (got instanceof GroupLock) return got
        const now = Date.now()
        if (now >= deadline) {
          const waited = wait > 0 ? `; waited ${Math.round((now - started) / 1000)} s` : ''
          throw new LockHeldError(`group ${o.group} is locked by ${describeHolder(got.holder)}${waited}`)
        }
        endNotice ??= o.onWait?.(`waiting for the lock of group ${o.group}, held by ${describeHolder(got.holder)}${Number.isFinite(wait) ? ` (up to ${wait} s)` : ''}`)
        await sleep(Math.min(POLL_MS, deadline - now))
      }
    } finally {
      endNotice?.()
    }
  }

  /** One try, under the gate: the lock, or who holds it. */
  private static async attempt(o: AcquireOptions): Promise<GroupLock | {holder?: HolderInfo}> {
    const gate = await GroupLock.enterGate(o.groupDir, o.group)
    let lock: GroupLock | undefined
    let takenOver: HolderInfo | undefined
    try {
      const mtime = await lockMtime(o.groupDir)
      const previous = await readHolderFile(o.groupDir)
      if (mtime !== undefined) {
        const stale = mtime < Date.now() - STALE_MS
        // No holder file under the gate: its maker was killed mid-acquire or mid-release.
        if (!stale && previous && !(await deadHere(previous))) return {holder: publicHolder(previous)}
        // Abandoned: its holder is gone. Safe to remove under the gate (see the notes).
        await fsp.rm(GroupLock.holderPath(o.groupDir), {force: true})
        await fsp.rm(GroupLock.lockPath(o.groupDir), {recursive: true, force: true})
        takenOver = previous ? publicHolder(previous) : {pid: 0, command: '(a process killed while taking or releasing the lock)', startedAt: isoSeconds(mtime), hostname: hostname()}
      }
      let release: () => Promise<void>
      try {
        release = await (await properLockfile()).lock(o.groupDir, {
          stale: STALE_MS,
          update: UPDATE_MS,
          retries: 0,
          realpath: false,
          ...lockfileFs(),
          lockfilePath: GroupLock.lockPath(o.groupDir),
          onCompromised: (err) => {
            if (lock) {
              lock.compromised = true
              lock.forget()
            }
            o.onCompromised(err)
          },
        })
      } catch (error) {
        // Only a clonectl that does not take the gate can get here first.
        if (errnoOf(error) === 'ELOCKED') return {holder: await GroupLock.inspect(o.groupDir)}
        throw error
      }
      const self = await procStat(process.pid)
      const holder: HolderFile = {
        pid: process.pid,
        command: o.command,
        startedAt: isoSeconds(Date.now()),
        hostname: hostname(),
        token: randomHex(8),
        bootId: await bootId(),
        pidStart: self && self !== 'gone' ? self.start : undefined,
      }
      lock = new GroupLock(o.groupDir, release, holder)
      GroupLock.heldHere.set(resolve(o.groupDir), lock)
      const tmp = `${GroupLock.holderPath(o.groupDir)}.tmp-${process.pid}-${holder.token}`
      try {
        if (metadataOnCallingThread()) {
          writeFileSync(tmp, `${JSON.stringify(holder)}\n`, {mode: 0o600})
          renameSync(tmp, GroupLock.holderPath(o.groupDir))
        } else {
          await fsp.writeFile(tmp, `${JSON.stringify(holder)}\n`, {mode: 0o600})
          await fsp.rename(tmp, GroupLock.holderPath(o.groupDir))
        }
        if (gate.lost()) throw new Error('the lock gate was lost while acquiring')
      } catch (error) {
        // A full file system (ENOSPC) leaves no temp file behind.
        await unlinkIfPresent(tmp).catch(() => undefined)
        await lock.release().catch(() => undefined)
        if (gate.lost()) return {}
        throw stateWriteError(o.groupDir, tmp, error)
      }
    } finally {
      await gate.release().catch(() => undefined)
    }
    if (!lock) throw new Error('GroupLock.attempt: no lock and no holder (unreachable)')
    if (takenOver) {
      try {
        o.onStaleTakeover?.(takenOver)
      } catch (error) {
        await lock.release().catch(() => undefined)
        throw error
      }
    }
    return lock
  }

  /** Take the acquisition gate; it is held for milliseconds, so keep trying briefly. */
  private static async enterGate(groupDir: string, group: string): Promise<{release: () => Promise<void>; lost: () => boolean}> {
    const path = GroupLock.gatePath(groupDir)
    const giveUp = Date.now() + GATE_STALE_MS + 5000
    for (;;) {
      let lost = false
      try {
        const release = await (await properLockfile()).lock(path, {
          stale: GATE_STALE_MS,
          retries: 0,
          realpath: false,
          ...lockfileFs(),
          lockfilePath: path,
          onCompromised: () => {
            lost = true
          },
        })
        return {release, lost: () => lost}
      } catch (error) {
        const code = errnoOf(error)
        if (code === 'ENOENT') throw new NotFoundError(`clone group ${group} has no directory ${groupDir}`, 'list groups with `clonectl group list`')
        if (code !== 'ELOCKED') throw error
        if (Date.now() > giveUp) throw new LockHeldError(`group ${group}: another process has been taking its lock for over ${(GATE_STALE_MS + 5000) / 1000} s (${path})`)
      }
      await sleep(10 + Math.floor(Math.random() * 40))
    }
  }

  /**
   * Release the lock: remove the holder file (if it is still ours), then the lock; after a
   * destroy under this lock, the group directory too. Idempotent;
   * a compromised lock is not touched (it may be someone else's now). Waits.
   */
  async release(): Promise<void> {
    if (this.released) return
    this.released = true
    this.forget()
    if (this.compromised) return
    // Under the gate: an acquirer must never see our lock without its holder file and take
    // it while we are about to remove it (see the notes). Without a gate (the group
    // directory destroyed under this lock, a gate stuck for seconds) release all the same.
    const gate = await GroupLock.enterGate(this.groupDir, basename(this.groupDir)).catch(() => undefined)
    try {
      const h = await readHolderFile(this.groupDir)
      if (h?.token === this.holderFile.token) await unlinkIfPresent(GroupLock.holderPath(this.groupDir))
      try {
        await this.releaseFn()
      } catch (error) {
        if (errnoOf(error) !== 'ERELEASED' && errnoOf(error) !== 'ENOTACQUIRED') throw error
      }
    } finally {
      await gate?.release().catch(() => undefined)
    }
    // Only an empty directory goes: a group re-created meanwhile keeps its new files.
    if (this.removeDirOnRelease) await fsp.rmdir(this.groupDir).catch(() => undefined)
  }

  private forget(): void {
    const key = resolve(this.groupDir)
    if (GroupLock.heldHere.get(key) === this) GroupLock.heldHere.delete(key)
  }
}
