import {NotFoundError, UsageError, errnoOf} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {BlockVolume} from './BlockVolume.js'
import {FileVolume, ioError} from './FileVolume.js'
import type {Volume} from './Volume.js'

/** nbd://, nbds://, nbd+unix://, nbds+unix:// (the NBD URI standard's schemes). */
export function isNbdUri(path: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(path)
}

/**
 * Open a path as the right kind of volume: a block device → BlockVolume (exclusive when
 * writing), a regular file → FileVolume. An NBD URI, a directory, a character device or a
 * missing path is an expected error with a one-line message. Waits.
 */
export async function openVolume(fs: DurableFs, path: string, opts: {write: boolean}): Promise<Volume> {
  if (isNbdUri(path)) throw new UsageError(`${path}: NBD remote volumes are not supported yet`, 'use an image file or a block device')
  let st
  try {
    st = await fs.stat(path)
  } catch (error) {
    const errno = errnoOf(error)
    if (errno === 'ENOENT' || errno === 'ENOTDIR') throw new NotFoundError(`volume ${path} does not exist`, 'check the path (pass --create to `clone add` to make a new sparse image)')
    throw ioError(path, 'opening', error)
  }
  if (st.isBlockDevice) return BlockVolume.openDevice(fs, path, st.rdev, opts)
  if (st.isFile) return FileVolume.open(fs, path, opts)
  // FileStat has no isDirectory; a directory is what readdir accepts.
  const isDir = await fs.readdir(path).then(
    () => true,
    () => false,
  )
  if (isDir) throw new UsageError(`${path} is a directory, not a volume`, 'name an image file or a block device')
  throw new UsageError(`${path} is neither a regular file nor a block device (a character device, FIFO or socket?)`, 'name an image file or a block device')
}
