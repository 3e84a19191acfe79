// ESM entry point of dvic-log: the same module as the CommonJS one (one registry per thread).
import dvicLog from './index.js';

export const {
  getLogger,
  createConsole,
  patchConsole,
  Logger,
  ConfigError,
  LEVELS,
  FORMAT_VERSION,
  FILE_PREFIX,
  VERSION,
} = dvicLog;
export default dvicLog;
