import {NotFoundError, UsageError, errnoOf} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {BlockVolume} from './BlockVolume.js'
import {FileVolume} from './FileVolume.js'
import type {Volume} from './Volume.js'

export function isNbdUri(path: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(path)
}

/** Open a path as the right kind of volume: an image file or a block device. Waits. */
export async function openVolume(fs: DurableFs, path: string, opts: {write: boolean}): Promise<Volume> {
  if (isNbdUri(path)) throw new UsageError(`${path}: NBD remote volumes are not supported yet`, 'use an image file or a block device')
  let st
  try {
    st = await fs.stat(path)
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') throw new NotFoundError(`volume ${path} does not exist`, 'check the path (pass --create to `clone add` to make a new sparse image)')
    throw error
  }
  if (st.isBlockDevice) return BlockVolume.openDevice(fs, path, st.rdev, opts)
  if (st.isFile) return FileVolume.open(fs, path, opts)
  throw new UsageError(`${path} is neither a regular file nor a block device`)
}
