import {NotFoundError, RefusedError, type RemoteError, UsageError, errnoOf} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {BlockVolume} from './BlockVolume.js'
import {deviceBusy, loopDevicesBackedBy} from './blockDevice.js'
import {FileVolume, ioError} from './FileVolume.js'
import type {Volume} from './Volume.js'

/** nbd://, nbds://, nbd+unix://, nbds+unix:// (the NBD URI standard's schemes). */
export function isNbdUri(path: string): boolean {
  // The scheme lowercased, not a case-insensitive expression: the first /i one compiled cost status ~0.3 ms.
  return /^nbds?(\+unix)?:\/\//.test(path.slice(0, 12).toLowerCase())
}

export interface OpenVolumeOptions {
  write: boolean
  /** An NBD remote's size as recorded: open it even when it is down (requests retry). */
  knownSize?: number
  /** Told when a remote opened deferred is down. */
  onRemoteDown?: (error: RemoteError) => void
}

/**
 * Open a path as the right kind of volume: a block device → BlockVolume (exclusive when
 * writing), a regular file → FileVolume, an NBD URI → RemoteVolume (an NBD client that
 * reconnects). A directory, a character device or a missing path is an expected error with
 * a one-line message. Waits.
 */
export async function openVolume(fs: DurableFs, path: string, opts: OpenVolumeOptions): Promise<Volume> {
  if (isNbdUri(path)) {
    // The NBD client (and node:tls with it) is loaded for remotes only: every command opens
    // volumes through here, and most groups have no remote clone.
    const {RemoteVolume} = await import('./RemoteVolume.js')
    // A remote already in a group may be down: open it deferred, so the group still opens.
    if (opts.knownSize !== undefined) return RemoteVolume.openOrDeferred(path, opts.knownSize, {write: opts.write}, opts.onRemoteDown)
    return RemoteVolume.open(path, {write: opts.write})
  }
  let st
  try {
    st = await fs.stat(path)
  } catch (error) {
    const errno = errnoOf(error)
    if (errno === 'ENOENT' || errno === 'ENOTDIR') throw new NotFoundError(`volume ${path} does not exist`, 'check the path')
    throw ioError(path, 'opening', error)
  }
  if (st.isBlockDevice) return BlockVolume.openDevice(fs, path, st.rdev, opts)
  if (st.isFile) {
    if (opts.write) await refuseBusyBacking(path, st.dev, st.ino)
    return FileVolume.open(fs, path, opts)
  }
  // FileStat has no isDirectory; a directory is what readdir accepts.
  const isDir = await fs.readdir(path).then(
    () => true,
    () => false,
  )
  if (isDir) throw new UsageError(`${path} is a directory, not a volume`, 'name an image file or a block device')
  throw new UsageError(`${path} is neither a regular file nor a block device (a character device, FIFO or socket?)`, 'name an image file or a block device')
}

/**
 * A file that backs a loop device counts as that device: writing it under a mounted (or
 * otherwise busy) loop device corrupts whatever uses the device, so it is refused as the
 * device itself would be (BlockVolume's O_EXCL open). Waits.
 */
async function refuseBusyBacking(path: string, dev: number, ino: number): Promise<void> {
  for (const loop of await loopDevicesBackedBy(dev, ino)) {
    const {busy, mountedOn} = await deviceBusy(loop.majorMinor, loop.devPath)
    if (busy)
      throw new RefusedError(
        `${path} backs loop device ${loop.devPath}, which is busy (${mountedOn.length > 0 ? `mounted on ${mountedOn.join(', ')}` : 'in use by another program'}); clonectl never writes a file under a busy device`,
        mountedOn.length > 0 ? `unmount it (umount ${mountedOn[0]}) and detach it (losetup -d ${loop.devPath}), or name another volume` : `stop whatever holds ${loop.devPath} and detach it (losetup -d ${loop.devPath}), or name another volume`,
      )
  }
}
