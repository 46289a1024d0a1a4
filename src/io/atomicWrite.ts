import {dirname} from 'node:path'
import type {DurableFs} from './DurableFs.js'
import {randomHex} from './randomId.js'

/**
 * Replace `path` with `data` atomically and durably: write a temp file, fdatasync it,
 * rename it over `path`, fsync the directory. A crash leaves either the old or the new
 * content, never a mix. On failure (ENOSPC, EIO) the temp file is removed and `path` is
 * left as it was.
 */
export async function writeFileAtomic(fs: DurableFs, path: string, data: Uint8Array): Promise<void> {
  // Unique even for two saves in one millisecond (the crash model hit that: EEXIST).
  const tmp = `${path}.tmp-${process.pid}-${randomHex(6)}`
  const f = await fs.open(tmp, {write: true, create: 'new', quick: true})
  try {
    try {
      await f.write(data, 0)
      await f.datasync()
    } finally {
      await f.close()
    }
    await fs.rename(tmp, path)
  } catch (error) {
    // A full file system (ENOSPC) must not leave temp files behind: `path` is unchanged.
    await fs.unlink(tmp).catch(() => undefined)
    throw error
  }
  await fs.fsyncDir(dirname(path))
}
