/**
 * Every command, by id: oclif's "explicit" command discovery (package.json `oclif.commands`).
 * It is also the entry of the one-file bundle that bin/run.js loads (scripts/bundle.mjs), so
 * a command runs without resolving and reading some 230 module files first. A test checks that
 * every file in commands/ is listed here.
 */
import Drill from './drill.js'
import Restore from './restore.js'
import Serve from './serve.js'
import Status from './status.js'
import Verify from './verify.js'
import CloneAdd from './clone/add.js'
import CloneFracture from './clone/fracture.js'
import CloneRemove from './clone/remove.js'
import CloneSync from './clone/sync.js'
import GroupCreate from './group/create.js'
import GroupDestroy from './group/destroy.js'
import GroupList from './group/list.js'
import JobCancel from './job/cancel.js'
import JobList from './job/list.js'
import JobPause from './job/pause.js'
import JobRate from './job/rate.js'
import JobResume from './job/resume.js'

export {execute} from '@oclif/core'
// package.json oclif.hooks.command_not_found: a mistyped command exits 2 naming the nearest one.
export {notFoundHook as NOT_FOUND_HOOK} from '../src/ui/notFound.js'
// package.json oclif.hooks.postrun: `clonectl autocomplete` installs a bash completion that completes names.
export {completionHook as COMPLETION_HOOK} from '../src/ui/completion.js'

export const COMMANDS = {
  'clone:add': CloneAdd,
  'clone:fracture': CloneFracture,
  'clone:remove': CloneRemove,
  'clone:sync': CloneSync,
  drill: Drill,
  'group:create': GroupCreate,
  'group:destroy': GroupDestroy,
  'group:list': GroupList,
  'job:cancel': JobCancel,
  'job:list': JobList,
  'job:pause': JobPause,
  'job:rate': JobRate,
  'job:resume': JobResume,
  restore: Restore,
  serve: Serve,
  status: Status,
  verify: Verify,
}
