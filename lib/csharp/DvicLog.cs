// DvicLog.cs: the dvic_log library for C# (Unity, Mono, .NET). One file, .NET Standard 2.0 APIs only:
// drop it into a Unity project's Assets, or compile it with your program.
//
//     var log = DvicLog.Logger.Get("robot-arm");
//     log.Info("calibrated");
//     log.Heartbeat();            // from the main loop: "I am alive", at most one record a second
//
// Each process writes $DVIC_LOG_DIR/dvic_log_<token> (JSON lines; docs/log-format.md is the contract)
// and the DVIC node daemon ships it to the central server. Every record is one write of a whole line,
// made under a lock: when a call returns, the line is in the file. Logging never throws into the
// caller for a logging failure (no directory, full disk): that is reported once on stderr.
//
// On Linux (x86, x64, ARM, ARM64) files are handled through libc (open with O_CREAT|O_EXCL|O_NOFOLLOW|
// O_APPEND|O_CLOEXEC, fchmod 0644, write, link, rename, statx) exactly as the format says; .NET Standard
// has no hard links, no O_APPEND and no file modes. Elsewhere (Windows, macOS, or without libc) a managed
// fallback uses FileStream (FileMode.CreateNew) and rotates by renaming (docs/libraries.md lists the gaps).
//
// In Unity, define nothing: UNITY_5_3_OR_NEWER enables DvicLog.UnityLogHandler, which sends Debug.Log*
// to a demo log (DVIC_LOG_UNITY enables it elsewhere, for tests against a stand-in UnityEngine).

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;

namespace DvicLog
{
    /// <summary>The five levels a record may carry (the numbers are Python's logging levels).</summary>
    public enum Level
    {
        Debug = 10,
        Info = 20,
        Warning = 30,
        Error = 40,
        Critical = 50,
    }

    /// <summary>A bad demo name or option: a programming error, thrown by Logger.Get.</summary>
    public sealed class ConfigException : ArgumentException
    {
        public ConfigException(string message) : base(message) { }
    }

    /// <summary>Settings that override the environment (DVIC_LOG_DIR, DVIC_LOG_MAX_BYTES, DVIC_LOG_KEEP_DAYS).</summary>
    public sealed class LoggerOptions
    {
        /// <summary>Directory of the file; must exist (default $DVIC_LOG_DIR, else /tmp).</summary>
        public string Directory;
        /// <summary>Cap per file in bytes, at least 4096 (default $DVIC_LOG_MAX_BYTES, else 8 MiB).</summary>
        public long? MaxBytes;
        /// <summary>Retention of exited demos' files in days, 0 keeps them (default $DVIC_LOG_KEEP_DAYS, else 7).</summary>
        public double? KeepDays;
    }

    /// <summary>
    /// The logger of one demo. Logger.Get(name) returns the same object for the same name, writing one
    /// file per process; Child("axis") logs as "name.axis" into that file. Thread-safe.
    /// </summary>
    public sealed class Logger
    {
        internal const int MaxLoggerChars = 200;
        static readonly object registryLock = new object();
        static readonly Dictionary<string, Logger> registry = new Dictionary<string, Logger>();

        readonly Demo demo;

        /// <summary>The "logger" field of this logger's records: the demo name, or "demo.child".</summary>
        public string Name { get; private set; }

        /// <summary>The demo name given to Get (the header's "name").</summary>
        public string DemoName { get { return demo.Name; } }

        /// <summary>Full path of the live file, or null when the log could not be opened.</summary>
        public string Path { get { return demo.File == null ? null : demo.File.Path; } }

        /// <summary>The 16-hex-character token of the file, or null.</summary>
        public string Token { get { return demo.File == null ? null : demo.File.Token; } }

        Logger(Demo demo, string name)
        {
            this.demo = demo;
            Name = name;
        }

        /// <summary>
        /// The logger of demo `name` (1-200 characters, one line). Throws ConfigException for a bad name or
        /// option. A log that cannot be opened because of the environment (DVIC_LOG_DIR missing or
        /// unwritable, a bad DVIC_LOG_MAX_BYTES) does not throw: one line on stderr says why, and the
        /// logger drops its records.
        /// </summary>
        public static Logger Get(string name, LoggerOptions options = null)
        {
            string key = Config.CheckName(name);
            lock (registryLock)
            {
                Logger existing;
                if (registry.TryGetValue(key, out existing))
                    return existing;
                LogFile file = null;
                try
                {
                    file = LogFile.Open(key, options ?? new LoggerOptions());
                }
                catch (ConfigException err)
                {
                    bool given = options != null && (options.Directory != null || options.MaxBytes.HasValue || options.KeepDays.HasValue);
                    if (given)
                        throw; // the program's own argument: its bug, shown to it
                    Report.Line("demo '" + key + "': " + Report.Describe(err) + "; its records are dropped");
                }
                catch (Exception err)
                {
                    Report.Line("demo '" + key + "': cannot create a log file: " + Report.Describe(err) + "; its records are dropped");
                }
                var logger = new Logger(new Demo(key, file), Json.FirstChars(key, MaxLoggerChars));
                registry[key] = logger;
                return logger;
            }
        }

        /// <summary>A logger writing to the same file whose records say logger "Name.suffix".</summary>
        public Logger Child(string suffix)
        {
            return new Logger(demo, Json.FirstChars(Name + "." + (suffix ?? ""), MaxLoggerChars));
        }

        public bool Debug(string msg) { return Write(Level.Debug, msg, (string)null); }
        public bool Info(string msg) { return Write(Level.Info, msg, (string)null); }
        public bool Warning(string msg) { return Write(Level.Warning, msg, (string)null); }
        public bool Error(string msg) { return Write(Level.Error, msg, (string)null); }
        public bool Critical(string msg) { return Write(Level.Critical, msg, (string)null); }

        /// <summary>An ERROR record whose "exc" is the exception (type, message and stack trace).</summary>
        public bool Error(string msg, Exception exception) { return Log(Level.Error, msg, exception); }

        /// <summary>A CRITICAL record whose "exc" is the exception.</summary>
        public bool Critical(string msg, Exception exception) { return Log(Level.Critical, msg, exception); }

        /// <summary>A record at `level`; with an exception, its text goes to the record's "exc".</summary>
        public bool Log(Level level, string msg, Exception exception = null)
        {
            string exc = null;
            if (exception != null)
            {
                try { exc = exception.ToString(); }
                catch (Exception) { exc = exception.GetType().FullName; }
            }
            return Write(level, msg, exc);
        }

        /// <summary>A record from a Python logging level number (25 -> INFO, 5 -> DEBUG).</summary>
        public bool Log(int level, string msg)
        {
            return Write(Json.LevelFromNumber(level), msg, (string)null);
        }

        /// <summary>One record with its fields as they are: `exc` is traceback text (or null).</summary>
        public bool Write(Level level, string msg, string exc)
        {
            return demo.Write(new Record(Clock.NowMs(), level, msg ?? "", Name, exc));
        }

        /// <summary>One record whose message is raw bytes, decoded as UTF-8 (invalid bytes become U+FFFD).</summary>
        public bool Write(Level level, byte[] utf8Message, string exc = null)
        {
            return Write(level, Json.DecodeUtf8(utf8Message ?? new byte[0]), exc);
        }

        /// <summary>
        /// Say the demo's main loop is alive: a heartbeat record, at most one per second per file (other
        /// calls write nothing and cost a lock, so call it every frame if you like). True when written.
        /// </summary>
        public bool Heartbeat()
        {
            return demo.Heartbeat();
        }

        /// <summary>Close the file (it stays for the daemon); a later record reopens it.</summary>
        public void Close()
        {
            demo.Close();
        }
    }

    /// <summary>One demo: its file (null if it could not be opened) and its failure reporting.</summary>
    sealed class Demo
    {
        public readonly string Name;
        public readonly LogFile File;
        int failing; // 1 while a failed write was reported and none succeeded since

        public Demo(string name, LogFile file)
        {
            Name = name;
            File = file;
        }

        public bool Write(Record record)
        {
            if (File == null)
                return false;
            try
            {
                File.WriteRecord(record);
                Interlocked.Exchange(ref failing, 0);
                return true;
            }
            catch (Exception err)
            {
                Failed(err);
                return false;
            }
        }

        public bool Heartbeat()
        {
            if (File == null)
                return false;
            try
            {
                bool written = File.Heartbeat();
                Interlocked.Exchange(ref failing, 0);
                return written;
            }
            catch (Exception err)
            {
                Failed(err);
                return false;
            }
        }

        public void Close()
        {
            if (File == null)
                return;
            try { File.Close(); }
            catch (Exception err) { Report.Line("closing " + File.Path + ": " + Report.Describe(err)); }
        }

        void Failed(Exception err)
        {
            // One line per failure episode: a full disk costs one line of stderr, not one per record.
            if (Interlocked.Exchange(ref failing, 1) == 0)
                Report.Line("cannot write to " + File.Path + ": " + Report.Describe(err) + "; records are dropped until writing works again");
        }
    }

    static class Report
    {
        /// <summary>One line on stderr, the way every dvic_log library reports a logging failure.</summary>
        public static void Line(string text)
        {
            try
            {
                Console.Error.WriteLine("dvic_log: " + text);
                Console.Error.Flush();
            }
            catch (Exception)
            {
                // no usable stderr: nothing more can be done, and the demo must go on
            }
        }

        public static string Describe(Exception err)
        {
            string text = err.Message ?? err.GetType().Name;
            return text.StartsWith("dvic_log: ", StringComparison.Ordinal) ? text.Substring(10) : text;
        }
    }

    static class Clock
    {
        static readonly DateTime epoch = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc);

        /// <summary>Unix time in whole milliseconds (records carry ts rounded to the millisecond).</summary>
        public static long NowMs() { return (DateTime.UtcNow - epoch).Ticks / TimeSpan.TicksPerMillisecond; }

        /// <summary>A monotonic clock in milliseconds, for the heartbeat and deleted-file checks.</summary>
        public static long MonotonicMs()
        {
            return (long)(System.Diagnostics.Stopwatch.GetTimestamp() * 1000.0 / System.Diagnostics.Stopwatch.Frequency);
        }
    }

    struct Record
    {
        public readonly long TsMs;
        public readonly Level Level;
        public readonly string Msg;
        public readonly string Logger;
        public readonly string Exc;

        public Record(long tsMs, Level level, string msg, string logger, string exc)
        {
            TsMs = tsMs;
            Level = level;
            Msg = msg;
            Logger = logger;
            Exc = exc;
        }

        public Record With(string msg, string logger, string exc) { return new Record(TsMs, Level, msg, logger, exc); }
    }

    // ----- settings ---------------------------------------------------------------------------------------

    static class Config
    {
        public const string DefaultDir = "/tmp";
        public const long DefaultMaxBytes = 8 * 1024 * 1024;
        public const long MinMaxBytes = 4096;
        public const double DefaultKeepDays = 7;
        const int MaxNameChars = 200;
        // Python's str.strip() whitespace, so a name is cleaned exactly as the Python library cleans it.
        const string PySpace = "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";
        static readonly Regex pyInt = new Regex(@"^[+-]?[0-9]+(?:_[0-9]+)*$");
        static readonly Regex pyFloat = new Regex(@"^[+-]?(?:[0-9]+(?:_[0-9]+)*(?:\.(?:[0-9]+(?:_[0-9]+)*)?)?|\.[0-9]+(?:_[0-9]+)*)(?:[eE][+-]?[0-9]+(?:_[0-9]+)*)?$");
        static readonly Regex pyFloatWord = new Regex(@"^[+-]?(?:inf|infinity|nan)$", RegexOptions.IgnoreCase);

        public static string PyStrip(string text) { return text.Trim(PySpace.ToCharArray()); }

        static string Env(string key)
        {
            try { return Environment.GetEnvironmentVariable(key) ?? ""; }
            catch (Exception) { return ""; }
        }

        public static string CheckName(string name)
        {
            if (name == null)
                throw new ConfigException("dvic_log: the demo name must be a string, not null");
            string stripped = PyStrip(name);
            if (stripped.Length == 0)
                throw new ConfigException("dvic_log: the demo name must not be empty");
            if (Json.CodePoints(stripped) > MaxNameChars)
                throw new ConfigException("dvic_log: the demo name is longer than " + MaxNameChars + " characters");
            if (stripped.IndexOfAny(new[] { '\r', '\n', '\0' }) >= 0)
                throw new ConfigException("dvic_log: the demo name must be one line without NUL characters");
            return stripped;
        }

        public static string ResolveDir(string directory)
        {
            string source = "directory option";
            if (directory == null)
            {
                string env = Env("DVIC_LOG_DIR");
                directory = env.Length > 0 ? env : DefaultDir;
                source = env.Length > 0 ? "DVIC_LOG_DIR" : "default directory";
            }
            if (!System.IO.Directory.Exists(directory))
                throw new ConfigException("dvic_log: " + source + " '" + directory + "' is not an existing directory");
            return directory;
        }

        public static long ResolveMaxBytes(long? maxBytes)
        {
            string source = "MaxBytes";
            long value;
            if (maxBytes.HasValue)
            {
                value = maxBytes.Value;
            }
            else
            {
                string raw = PyStrip(Env("DVIC_LOG_MAX_BYTES"));
                if (raw.Length == 0)
                    return DefaultMaxBytes;
                source = "DVIC_LOG_MAX_BYTES";
                if (!pyInt.IsMatch(raw) || !long.TryParse(raw.Replace("_", ""), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out value))
                    throw new ConfigException("dvic_log: DVIC_LOG_MAX_BYTES='" + raw + "' is not a whole number of bytes");
            }
            if (value < MinMaxBytes)
                throw new ConfigException("dvic_log: " + source + "=" + value + " is below the minimum of " + MinMaxBytes + " bytes");
            return value;
        }

        public static double ResolveKeepSeconds(double? keepDays)
        {
            string source = "KeepDays";
            double value;
            if (keepDays.HasValue)
            {
                value = keepDays.Value;
            }
            else
            {
                string raw = PyStrip(Env("DVIC_LOG_KEEP_DAYS"));
                if (raw.Length == 0)
                    return DefaultKeepDays * 86400;
                source = "DVIC_LOG_KEEP_DAYS";
                if (pyFloatWord.IsMatch(raw))
                    value = raw.ToLowerInvariant().Contains("nan") ? double.NaN : raw.StartsWith("-", StringComparison.Ordinal) ? double.NegativeInfinity : double.PositiveInfinity;
                else if (!pyFloat.IsMatch(raw) || !double.TryParse(raw.Replace("_", ""), NumberStyles.Float, CultureInfo.InvariantCulture, out value))
                    throw new ConfigException("dvic_log: DVIC_LOG_KEEP_DAYS='" + raw + "' is not a number of days");
            }
            if (!(value >= 0) || double.IsInfinity(value))
                throw new ConfigException("dvic_log: " + source + "=" + value.ToString(CultureInfo.InvariantCulture) + " must be a finite number of days >= 0");
            return value * 86400;
        }
    }

    // ----- encoding: the same bytes as the Python library's json.dumps(ensure_ascii=False) ----------------

    /// <summary>A growable byte buffer that lines are built in (one per thread, reused).</summary>
    sealed class Bytes
    {
        public byte[] Data = new byte[256];
        public int Length;

        public void Clear() { Length = 0; }

        void Room(int more)
        {
            if (Length + more <= Data.Length)
                return;
            int size = Data.Length * 2;
            while (size < Length + more)
                size *= 2;
            Array.Resize(ref Data, size);
        }

        public void Add(byte b)
        {
            Room(1);
            Data[Length++] = b;
        }

        public void Ascii(string text)
        {
            Room(text.Length);
            for (int i = 0; i < text.Length; i++)
                Data[Length++] = (byte)text[i];
        }

        public byte[] ToArray()
        {
            var copy = new byte[Length];
            Buffer.BlockCopy(Data, 0, copy, 0, Length);
            return copy;
        }

        /// <summary>A JSON string literal: Python's escapes, U+0085/2028/2029 escaped, lone surrogates -> U+FFFD.</summary>
        public void Quote(string text)
        {
            Room(text.Length * 3 + 2);
            Data[Length++] = (byte)'"';
            for (int i = 0; i < text.Length; i++)
            {
                char c = text[i];
                if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
                {
                    Data[Length++] = (byte)c;
                    continue;
                }
                switch (c)
                {
                    case '"': Ascii("\\\""); continue;
                    case '\\': Ascii("\\\\"); continue;
                    case '\n': Ascii("\\n"); continue;
                    case '\r': Ascii("\\r"); continue;
                    case '\t': Ascii("\\t"); continue;
                    case '\b': Ascii("\\b"); continue;
                    case '\f': Ascii("\\f"); continue;
                }
                if (c < 0x20 || c == '\u0085' || c == '\u2028' || c == '\u2029')
                {
                    Ascii("\\u" + ((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    continue;
                }
                int cp = c;
                if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                {
                    cp = char.ConvertToUtf32(c, text[i + 1]);
                    i++;
                }
                else if (char.IsSurrogate(c))
                {
                    cp = 0xfffd;
                }
                Utf8(cp);
            }
            Add((byte)'"');
        }

        void Utf8(int cp)
        {
            Room(4);
            if (cp < 0x80)
            {
                Data[Length++] = (byte)cp;
            }
            else if (cp < 0x800)
            {
                Data[Length++] = (byte)(0xc0 | (cp >> 6));
                Data[Length++] = (byte)(0x80 | (cp & 0x3f));
            }
            else if (cp < 0x10000)
            {
                Data[Length++] = (byte)(0xe0 | (cp >> 12));
                Data[Length++] = (byte)(0x80 | ((cp >> 6) & 0x3f));
                Data[Length++] = (byte)(0x80 | (cp & 0x3f));
            }
            else
            {
                Data[Length++] = (byte)(0xf0 | (cp >> 18));
                Data[Length++] = (byte)(0x80 | ((cp >> 12) & 0x3f));
                Data[Length++] = (byte)(0x80 | ((cp >> 6) & 0x3f));
                Data[Length++] = (byte)(0x80 | (cp & 0x3f));
            }
        }
    }

    static class Json
    {
        public const string TruncationMark = " [dvic_log: truncated]";

        public static string LevelName(Level level)
        {
            return LevelName((int)level);
        }

        static string LevelName(int level)
        {
            if (level >= 50) return "CRITICAL";
            if (level >= 40) return "ERROR";
            if (level >= 30) return "WARNING";
            if (level >= 20) return "INFO";
            return "DEBUG";
        }

        /// <summary>Custom numeric levels fall to the nearest standard level below, as in Python.</summary>
        public static Level LevelFromNumber(int level)
        {
            switch (LevelName(level))
            {
                case "CRITICAL": return Level.Critical;
                case "ERROR": return Level.Error;
                case "WARNING": return Level.Warning;
                case "INFO": return Level.Info;
                default: return Level.Debug;
            }
        }

        /// <summary>Python's repr() of round(ms / 1000, 3): "1764000000.5", "1764000000.0".</summary>
        public static string Seconds(long ms)
        {
            string whole = (ms / 1000).ToString(CultureInfo.InvariantCulture);
            string frac = (ms % 1000).ToString("000", CultureInfo.InvariantCulture).TrimEnd('0');
            return whole + "." + (frac.Length == 0 ? "0" : frac);
        }

        public static void RecordLine(Bytes b, Record r)
        {
            b.Clear();
            b.Ascii("{\"ts\":");
            b.Ascii(Seconds(r.TsMs));
            b.Ascii(",\"level\":\"");
            b.Ascii(LevelName(r.Level));
            b.Ascii("\",\"msg\":");
            b.Quote(r.Msg);
            if (!string.IsNullOrEmpty(r.Logger))
            {
                b.Ascii(",\"logger\":");
                b.Quote(r.Logger);
            }
            if (!string.IsNullOrEmpty(r.Exc))
            {
                b.Ascii(",\"exc\":");
                b.Quote(r.Exc);
            }
            b.Ascii("}\n");
        }

        public static byte[] RecordBytes(Record r)
        {
            var b = new Bytes();
            RecordLine(b, r);
            return b.ToArray();
        }

        public static byte[] HeartbeatLine(long ms)
        {
            return Encoding.ASCII.GetBytes("{\"ts\":" + Seconds(ms) + ",\"level\":\"DEBUG\",\"msg\":\"heartbeat\",\"heartbeat\":1}\n");
        }

        public static byte[] HeaderLine(string token, string name, Identity id, long startMs, int rotated)
        {
            var b = new Bytes();
            b.Ascii("{\"dvic_log\":1,\"token\":");
            b.Quote(token);
            b.Ascii(",\"name\":");
            b.Quote(name);
            b.Ascii(",\"pid\":" + id.Pid.ToString(CultureInfo.InvariantCulture));
            b.Ascii(",\"pid_start\":" + (id.PidStart.HasValue ? id.PidStart.Value.ToString(CultureInfo.InvariantCulture) : "null"));
            b.Ascii(",\"exe\":");
            b.Quote(id.Exe);
            b.Ascii(",\"argv\":[");
            for (int i = 0; i < id.Argv.Length; i++)
            {
                if (i > 0)
                    b.Add((byte)',');
                b.Quote(id.Argv[i]);
            }
            b.Ascii("],\"user\":");
            b.Quote(id.User);
            b.Ascii(",\"host\":");
            b.Quote(id.Host);
            b.Ascii(",\"start\":" + Seconds(startMs));
            if (rotated != 0)
                b.Ascii(",\"rotated\":" + rotated.ToString(CultureInfo.InvariantCulture));
            b.Ascii("}\n");
            return b.ToArray();
        }

        // ----- text as Python counts it: code points; lone surrogates are 3 UTF-8 bytes -------------------

        public static int CodePoints(string text)
        {
            int n = 0;
            for (int i = 0; i < text.Length; i++, n++)
            {
                if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                    i++;
            }
            return n;
        }

        /// <summary>The first n code points of text (Python's text[:n]).</summary>
        public static string FirstChars(string text, int n)
        {
            int i = 0;
            for (int k = 0; k < n && i < text.Length; k++)
                i += char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            return text.Substring(0, i);
        }

        /// <summary>Bytes one character takes inside a line: JSON escapes, escaped line breaks, U+FFFD for a lone surrogate.</summary>
        static int CharSize(string text, int i, out int width)
        {
            char c = text[i];
            width = 1;
            if (c < 0x80)
            {
                if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f')
                    return 2;
                return c < 0x20 ? 6 : 1;
            }
            if (c == '\u0085' || c == '\u2028' || c == '\u2029')
                return 6;
            if (c < 0x800)
                return 2;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                width = 2;
                return 4;
            }
            return 3; // a lone surrogate is written as U+FFFD
        }

        /// <summary>Bytes text takes inside a line (its encoded size), without the quotes.</summary>
        public static int EncodedSize(string text)
        {
            int n = 0;
            int width;
            for (int i = 0; i < text.Length; i += width)
                n += CharSize(text, i, out width);
            return n;
        }

        /// <summary>
        /// The longest prefix of whole characters of text whose encoded size is at most budget bytes (sizes
        /// add up character by character: one pass finds what the Python library's binary search finds).
        /// </summary>
        static string CutEncoded(string text, int budget)
        {
            int n = 0;
            int i = 0;
            int width;
            while (i < text.Length)
            {
                int size = CharSize(text, i, out width);
                if (n + size > budget)
                    break;
                n += size;
                i += width;
            }
            return text.Substring(0, i);
        }

        static long FloorDiv(long a, long b)
        {
            long q = a / b;
            return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
        }

        /// <summary>
        /// The line of a record cut to at most maxLine bytes: msg, exc and logger share the room (a port of
        /// the Python library's fit_record, byte for byte); the cut text ends with TruncationMark.
        /// </summary>
        public static byte[] FitRecord(Record r, long maxLine)
        {
            byte[] line = RecordBytes(r);
            if (line.Length <= maxLine)
                return line;
            var values = new Dictionary<string, string> { { "msg", r.Msg }, { "exc", r.Exc }, { "logger", r.Logger } };
            var fields = new List<string>();
            foreach (string key in new[] { "msg", "exc", "logger" })
            {
                if (!string.IsNullOrEmpty(values[key]))
                    fields.Add(key);
            }
            if (fields.Count == 0)
                return line;
            var outv = new Dictionary<string, string>(values);
            foreach (string key in fields)
                outv[key] = TruncationMark;
            long room = maxLine - RecordBytes(Build(r, outv)).Length;
            var sizes = new Dictionary<string, int>();
            foreach (string key in fields)
                sizes[key] = EncodedSize(values[key]);
            var shares = Share(room, sizes, fields);
            foreach (string key in fields)
            {
                string text = values[key];
                if (shares[key] < sizes[key])
                    text = CutEncoded(text, (int)shares[key]) + TruncationMark;
                outv[key] = text;
            }
            line = RecordBytes(Build(r, outv));
            // Only when even the marks do not fit (a tiny cap, a long logger name) is the line still too long:
            // then the longest field is trimmed by the overflow, as the Python library does.
            for (int i = 0; i < 16; i++)
            {
                long overflow = line.Length - maxLine;
                if (overflow <= 0)
                    return line;
                string longest = fields[0];
                foreach (string key in fields)
                {
                    if (CodePoints(outv[key]) > CodePoints(outv[longest]))
                        longest = key;
                }
                string text = outv[longest];
                if (text.EndsWith(TruncationMark, StringComparison.Ordinal))
                    text = text.Substring(0, text.Length - TruncationMark.Length);
                outv[longest] = CutEncoded(text, (int)(EncodedSize(text) - overflow)) + TruncationMark;
                line = RecordBytes(Build(r, outv));
            }
            return line;
        }

        static Record Build(Record r, Dictionary<string, string> v)
        {
            return r.With(v["msg"] ?? "", v["logger"], v["exc"]);
        }

        /// <summary>Split room between fields: small ones keep all they need, big ones share the rest.</summary>
        static Dictionary<string, long> Share(long room, Dictionary<string, int> sizes, List<string> fields)
        {
            var shares = new Dictionary<string, long>();
            var pending = new List<string>(fields);
            // Python's sorted() is stable: equal sizes keep the msg, exc, logger order.
            var ordered = new List<string>();
            foreach (var key in pending)
            {
                int at = ordered.Count;
                while (at > 0 && sizes[ordered[at - 1]] > sizes[key])
                    at--;
                ordered.Insert(at, key);
            }
            while (ordered.Count > 0)
            {
                long fair = FloorDiv(room, ordered.Count);
                string key = ordered[0];
                ordered.RemoveAt(0);
                shares[key] = Math.Min(sizes[key], Math.Max(0, fair));
                room -= shares[key];
            }
            return shares;
        }

        /// <summary>UTF-8 bytes to text; each maximal invalid subsequence becomes one U+FFFD (Python's "replace").</summary>
        public static string DecodeUtf8(byte[] data)
        {
            var sb = new StringBuilder(data.Length);
            int i = 0;
            while (i < data.Length)
            {
                int b = data[i];
                if (b < 0x80)
                {
                    sb.Append((char)b);
                    i++;
                    continue;
                }
                int need;
                int lo = 0x80, hi = 0xbf; // allowed range of the second byte (Unicode table 3-7)
                int cp;
                if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; }
                else if (b == 0xe0) { need = 2; lo = 0xa0; cp = 0; }
                else if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) { need = 2; cp = b & 0x0f; }
                else if (b == 0xed) { need = 2; hi = 0x9f; cp = 0x0d; }
                else if (b == 0xf0) { need = 3; lo = 0x90; cp = 0; }
                else if (b >= 0xf1 && b <= 0xf3) { need = 3; cp = b & 0x07; }
                else if (b == 0xf4) { need = 3; hi = 0x8f; cp = 4; }
                else
                {
                    sb.Append('\ufffd');
                    i++;
                    continue;
                }
                int k = 1;
                for (; k <= need && i + k < data.Length; k++)
                {
                    int c = data[i + k];
                    int min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xbf;
                    if (c < min || c > max)
                        break;
                    cp = (cp << 6) | (c & 0x3f);
                }
                if (k <= need)
                {
                    sb.Append('\ufffd'); // the maximal subpart i .. i+k-1; the byte at i+k starts afresh
                    i += k;
                    continue;
                }
                sb.Append(char.ConvertFromUtf32(cp));
                i += need + 1;
            }
            return sb.ToString();
        }
    }

    // ----- who is logging -------------------------------------------------------------------------------

    sealed class Identity
    {
        const int MaxArgs = 64;
        const int MaxArgChars = 256;

        public int Pid;
        public long? PidStart;
        public string Exe;
        public string[] Argv;
        public string User;
        public string Host;

        public Identity Copy() { return (Identity)MemberwiseClone(); }

        /// <summary>Field 22 of /proc/&lt;pid&gt;/stat (start time in clock ticks since boot), or null.</summary>
        public static long? ReadPidStart(int pid)
        {
            string stat;
            try { stat = File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat", Encoding.UTF8); }
            catch (Exception) { return null; }
            // Field 2 (comm) is in parentheses and may hold spaces and ")": split after the last one.
            int end = stat.LastIndexOf(')');
            if (end < 0)
                return null;
            string[] fields = stat.Substring(end + 1).Split(new[] { ' ', '\n' }, StringSplitOptions.RemoveEmptyEntries);
            long value;
            if (fields.Length > 19 && long.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out value))
                return value;
            return null;
        }

        /// <summary>This process: argv is Environment.GetCommandLineArgs() (the program, then its arguments).</summary>
        public static Identity Current()
        {
            int pid;
            string exe = "";
            using (var me = System.Diagnostics.Process.GetCurrentProcess())
            {
                pid = me.Id;
                try { exe = me.MainModule.FileName ?? ""; }
                catch (Exception) { exe = ""; }
            }
            string[] args;
            try { args = Environment.GetCommandLineArgs(); }
            catch (Exception) { args = new string[0]; }
            return new Identity
            {
                Pid = pid,
                PidStart = ReadPidStart(pid),
                Exe = exe,
                Argv = Bounded(args),
                User = UserName(),
                Host = HostName(),
            };
        }

        static string[] Bounded(string[] args)
        {
            var out_ = new List<string>();
            for (int i = 0; i < args.Length && i < MaxArgs; i++)
            {
                string a = args[i] ?? "";
                out_.Add(Json.CodePoints(a) > MaxArgChars ? Json.FirstChars(a, MaxArgChars) + "..." : a);
            }
            if (args.Length > MaxArgs)
                out_.Add("... (" + (args.Length - MaxArgs) + " more arguments)");
            return out_.ToArray();
        }

        static string UserName()
        {
            string name = Posix.EffectiveUserName();
            if (name != null)
                return name;
            try { return Environment.UserName; }
            catch (Exception) { return "unknown"; }
        }

        static string HostName()
        {
            // What Python's socket.gethostname() returns on Linux (uname's nodename), whole.
            try
            {
                string host = File.ReadAllText("/proc/sys/kernel/hostname").Trim();
                if (host.Length > 0)
                    return host;
            }
            catch (Exception)
            {
                // not Linux
            }
            try { return System.Net.Dns.GetHostName(); }
            catch (Exception) { return Environment.MachineName; }
        }
    }

    // ----- the file system: libc on Linux, FileStream elsewhere -----------------------------------------

    /// <summary>A failed file operation with its errno name (EEXIST, ENOENT, ENOSPC ...).</summary>
    sealed class FsException : IOException
    {
        public readonly string Code;

        public FsException(string code, string message) : base(message) { Code = code; }

        public bool NoRoom { get { return Code == "ENOSPC" || Code == "EDQUOT" || Code == "EFBIG"; } }
    }

    /// <summary>An open log file, appended to.</summary>
    abstract class Sink
    {
        /// <summary>One write of data[0..count); returns the bytes written (less when the disk is full).</summary>
        public abstract int Write(byte[] data, int count);
        /// <summary>False once the file no longer has a name (deleted under the writer).</summary>
        public abstract bool StillLinked();
        /// <summary>Something that names this very file (inode and device on Linux).</summary>
        public abstract string FileId();
        public abstract long Size();
        public abstract void Close();
    }

    abstract class FileSystem
    {
        static FileSystem chosen;
        internal static bool ForceManaged = false; // tests run the managed fallback on Linux with this

        public static FileSystem Get()
        {
            if (chosen == null)
                chosen = !ForceManaged && Posix.Usable() ? (FileSystem)new PosixFileSystem() : new ManagedFileSystem();
            return chosen;
        }

        internal static void Reset() { chosen = null; }

        public abstract string Kind { get; }
        /// <summary>Create path exclusively (never through a symlink), mode 0644, holding only the header.</summary>
        public abstract Sink Create(string path, byte[] header);
        /// <summary>Open an existing file for appending; null if it does not exist (or is a symlink).</summary>
        public abstract Sink OpenAppend(string path);
        public abstract void Link(string from, string to);
        public abstract void Rename(string from, string to);
        public abstract void UnlinkIfPresent(string path);
        /// <summary>(uid, mode, mtime) of a path itself (not a symlink's target), or null; for retention.</summary>
        public abstract bool Lstat(string path, out long uid, out bool regular, out double mtime);
        public abstract long Uid();
        /// <summary>The first bytes of a file, never through a symlink, never blocking (retention's header read).</summary>
        public abstract byte[] ReadHead(string path, int max);
    }

    static class Posix
    {
        const string Libc = "libc";
        public const int O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0x40, O_EXCL = 0x80, O_APPEND = 0x400, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
        const int AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_EMPTY_PATH = 0x1000;
        const uint STATX_BASIC = 0x7ff;
        static int usable = -1;
        public static int O_NOFOLLOW;

        [DllImport(Libc, SetLastError = true)] static extern int open([MarshalAs(UnmanagedType.LPStr)] string path, int flags, int mode);
        [DllImport(Libc, SetLastError = true)] static extern IntPtr write(int fd, byte[] buf, IntPtr count);
        [DllImport(Libc, SetLastError = true)] static extern IntPtr read(int fd, byte[] buf, IntPtr count);
        [DllImport(Libc, SetLastError = true)] static extern int close(int fd);
        [DllImport(Libc, SetLastError = true)] static extern int fchmod(int fd, uint mode);
        [DllImport(Libc, SetLastError = true)] static extern int link([MarshalAs(UnmanagedType.LPStr)] string from, [MarshalAs(UnmanagedType.LPStr)] string to);
        [DllImport(Libc, SetLastError = true)] static extern int rename([MarshalAs(UnmanagedType.LPStr)] string from, [MarshalAs(UnmanagedType.LPStr)] string to);
        [DllImport(Libc, SetLastError = true)] static extern int unlink([MarshalAs(UnmanagedType.LPStr)] string path);
        [DllImport(Libc, SetLastError = true)] static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPStr)] string path, int flags, uint mask, byte[] buf);
        [DllImport(Libc)] static extern uint geteuid();
        [DllImport(Libc)] static extern IntPtr getpwuid(uint uid);
        [DllImport(Libc, SetLastError = true)] static extern IntPtr strerror(int errnum);

        /// <summary>Linux on an architecture whose open() flags are known, with a working libc and statx.</summary>
        public static bool Usable()
        {
            if (usable >= 0)
                return usable == 1;
            usable = 0;
            try
            {
                if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
                    return false;
                switch (RuntimeInformation.OSArchitecture)
                {
                    case Architecture.X86:
                    case Architecture.X64:
                        O_NOFOLLOW = 0x20000;
                        break;
                    case Architecture.Arm:
                    case Architecture.Arm64:
                        O_NOFOLLOW = 0x8000;
                        break;
                    default:
                        return false;
                }
                var buf = new byte[256];
                if (statx(AT_FDCWD, "/", 0, STATX_BASIC, buf) != 0)
                    return false;
                geteuid();
                usable = 1;
            }
            catch (Exception)
            {
                usable = 0; // no libc by that name (IL2CPP, another OS), or no statx (glibc < 2.28)
            }
            return usable == 1;
        }

        public static FsException Error(string what)
        {
            int errno = Marshal.GetLastWin32Error();
            string text;
            try { text = Marshal.PtrToStringAnsi(strerror(errno)); }
            catch (Exception) { text = "error " + errno; }
            return new FsException(ErrnoName(errno), what + ": " + text + " (" + ErrnoName(errno) + ")");
        }

        static string ErrnoName(int errno)
        {
            switch (errno)
            {
                case 2: return "ENOENT";
                case 4: return "EINTR";
                case 13: return "EACCES";
                case 17: return "EEXIST";
                case 18: return "EXDEV";
                case 21: return "EISDIR";
                case 27: return "EFBIG";
                case 28: return "ENOSPC";
                case 30: return "EROFS";
                case 40: return "ELOOP";
                case 95: return "EOPNOTSUPP";
                case 122: return "EDQUOT";
                case 1: return "EPERM";
                default: return "E" + errno.ToString(CultureInfo.InvariantCulture);
            }
        }

        public static string EffectiveUserName()
        {
            if (!Usable())
                return null;
            try
            {
                uint uid = geteuid();
                IntPtr pw = getpwuid(uid);
                // pw_name is the first field of struct passwd on every platform.
                return pw == IntPtr.Zero ? uid.ToString(CultureInfo.InvariantCulture) : Marshal.PtrToStringAnsi(Marshal.ReadIntPtr(pw));
            }
            catch (Exception)
            {
                return null;
            }
        }

        public static long Euid() { return geteuid(); }

        public static int Open(string path, int flags, int mode)
        {
            for (;;)
            {
                int fd = open(path, flags | O_CLOEXEC, mode);
                if (fd >= 0)
                    return fd;
                FsException err = Error("open " + path);
                if (err.Code != "EINTR")
                    throw err;
            }
        }

        public static int Write(int fd, byte[] data, int count)
        {
            for (;;)
            {
                long n = (long)write(fd, data, (IntPtr)count);
                if (n >= 0)
                    return (int)n;
                FsException err = Error("write");
                if (err.Code != "EINTR")
                    throw err;
            }
        }

        public static int Read(int fd, byte[] data, int count)
        {
            long n = (long)read(fd, data, (IntPtr)count);
            if (n < 0)
                throw Error("read");
            return (int)n;
        }

        public static void Fchmod(int fd, uint mode) { if (fchmod(fd, mode) != 0) throw Error("fchmod"); }
        public static void Close(int fd) { close(fd); }
        public static void Link(string from, string to) { if (link(from, to) != 0) throw Error("link " + to); }
        public static void Rename(string from, string to) { if (rename(from, to) != 0) throw Error("rename " + from); }

        public static void UnlinkIfPresent(string path)
        {
            if (unlink(path) != 0)
            {
                FsException err = Error("unlink " + path);
                if (err.Code != "ENOENT")
                    throw err;
            }
        }

        /// <summary>statx of an open descriptor (path null) or of a path itself: a fixed layout on every architecture.</summary>
        public static byte[] Statx(int fd, string path)
        {
            var buf = new byte[256];
            int rc = path == null ? statx(fd, "", AT_EMPTY_PATH, STATX_BASIC, buf) : statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC, buf);
            if (rc != 0)
                throw Error("statx");
            return buf;
        }

        public static uint Nlink(byte[] st) { return BitConverter.ToUInt32(st, 16); }
        public static uint StUid(byte[] st) { return BitConverter.ToUInt32(st, 20); }
        public static int Mode(byte[] st) { return BitConverter.ToUInt16(st, 28); }
        public static ulong Ino(byte[] st) { return BitConverter.ToUInt64(st, 32); }
        public static long StSize(byte[] st) { return BitConverter.ToInt64(st, 40); }
        public static double Mtime(byte[] st) { return BitConverter.ToInt64(st, 112) + BitConverter.ToUInt32(st, 120) / 1e9; }
        public static string Dev(byte[] st) { return BitConverter.ToUInt32(st, 136) + ":" + BitConverter.ToUInt32(st, 140); }
    }

    sealed class PosixSink : Sink
    {
        int fd;

        public PosixSink(int fd) { this.fd = fd; }

        public override int Write(byte[] data, int count) { return Posix.Write(fd, data, count); }
        public override bool StillLinked() { return Posix.Nlink(Posix.Statx(fd, null)) > 0; }

        public override string FileId()
        {
            byte[] st = Posix.Statx(fd, null);
            return Posix.Ino(st) + "@" + Posix.Dev(st);
        }

        public override long Size() { return Posix.StSize(Posix.Statx(fd, null)); }

        public override void Close()
        {
            if (fd >= 0)
                Posix.Close(fd);
            fd = -1;
        }
    }

    sealed class PosixFileSystem : FileSystem
    {
        public override string Kind { get { return "libc"; } }

        public override Sink Create(string path, byte[] header)
        {
            // O_EXCL with O_NOFOLLOW refuses any existing name, a symlink planted in /tmp included.
            int fd = Posix.Open(path, Posix.O_WRONLY | Posix.O_CREAT | Posix.O_EXCL | Posix.O_APPEND | Posix.O_NOFOLLOW, 420 /* 0644 */);
            try
            {
                Posix.Fchmod(fd, 420); // a restrictive umask must not hide the file from the daemon
                if (Posix.Write(fd, header, header.Length) != header.Length)
                    throw new FsException("ENOSPC", "dvic_log: short write of the header to " + path);
            }
            catch (Exception)
            {
                Posix.Close(fd);
                try { Posix.UnlinkIfPresent(path); }
                catch (Exception) { }
                throw;
            }
            return new PosixSink(fd);
        }

        public override Sink OpenAppend(string path)
        {
            int fd;
            try { fd = Posix.Open(path, Posix.O_WRONLY | Posix.O_APPEND | Posix.O_NOFOLLOW, 0); }
            catch (FsException err)
            {
                if (err.Code == "ENOENT" || err.Code == "ELOOP")
                    return null;
                throw;
            }
            if ((Posix.Mode(Posix.Statx(fd, null)) & 0xf000) != 0x8000)
            {
                Posix.Close(fd);
                return null; // not a regular file
            }
            return new PosixSink(fd);
        }

        public override void Link(string from, string to) { Posix.Link(from, to); }
        public override void Rename(string from, string to) { Posix.Rename(from, to); }
        public override void UnlinkIfPresent(string path) { Posix.UnlinkIfPresent(path); }
        public override long Uid() { return Posix.Euid(); }

        public override bool Lstat(string path, out long uid, out bool regular, out double mtime)
        {
            uid = -1;
            regular = false;
            mtime = 0;
            byte[] st;
            try { st = Posix.Statx(-1, path); }
            catch (FsException) { return false; }
            uid = Posix.StUid(st);
            regular = (Posix.Mode(st) & 0xf000) == 0x8000;
            mtime = Posix.Mtime(st);
            return true;
        }

        public override byte[] ReadHead(string path, int max)
        {
            int fd;
            try { fd = Posix.Open(path, Posix.O_RDONLY | Posix.O_NOFOLLOW | Posix.O_NONBLOCK, 0); }
            catch (FsException) { return null; }
            try
            {
                var buf = new byte[max];
                int n = Posix.Read(fd, buf, max);
                Array.Resize(ref buf, n);
                return buf;
            }
            catch (FsException) { return null; }
            finally { Posix.Close(fd); }
        }
    }

    /// <summary>
    /// The fallback without libc: FileStream. Gaps against the format: no O_NOFOLLOW beyond CreateNew's
    /// exclusive create, no O_APPEND (the stream writes at its own end), no fchmod (the umask decides the
    /// mode), no hard links (rotation renames live to .1, so the live name is missing for a moment), a
    /// deleted file is noticed by its name, and retention trusts the header's user instead of the owner.
    /// </summary>
    sealed class ManagedSink : Sink
    {
        readonly FileStream stream;
        readonly string path;
        readonly string id;

        public ManagedSink(FileStream stream, string path, string id)
        {
            this.stream = stream;
            this.path = path;
            this.id = id;
        }

        public override int Write(byte[] data, int count)
        {
            long before = stream.Length;
            try
            {
                stream.Write(data, 0, count);
                stream.Flush();
                return count;
            }
            catch (IOException)
            {
                long written = Math.Max(0, stream.Length - before);
                stream.Seek(0, SeekOrigin.End);
                if (written > 0 && written < count)
                    return (int)written; // a short write: the caller keeps the rest for later
                throw;
            }
        }

        public override bool StillLinked() { return File.Exists(path); }
        public override string FileId() { return id; }
        public override long Size() { return stream.Length; }
        public override void Close() { stream.Dispose(); }
    }

    sealed class ManagedFileSystem : FileSystem
    {
        public override string Kind { get { return "managed"; } }

        static FileStream OpenStream(string path, FileMode mode)
        {
            // Unbuffered, and shareable so that readers and a rename (rotation) are never refused.
            return new FileStream(path, mode, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);
        }

        public override Sink Create(string path, byte[] header)
        {
            FileStream stream;
            try { stream = OpenStream(path, FileMode.CreateNew); }
            catch (IOException err)
            {
                if (File.Exists(path) || Directory.Exists(path))
                    throw new FsException("EEXIST", "create " + path + ": " + err.Message);
                throw;
            }
            try
            {
                stream.Write(header, 0, header.Length);
                stream.Flush();
            }
            catch (Exception)
            {
                stream.Dispose();
                try { File.Delete(path); }
                catch (Exception) { }
                throw;
            }
            // The file's identity: its header (token and rotation number) names it uniquely.
            return new ManagedSink(stream, path, Convert.ToBase64String(header));
        }

        public override Sink OpenAppend(string path)
        {
            if (!File.Exists(path) || (File.GetAttributes(path) & FileAttributes.ReparsePoint) != 0)
                return null;
            FileStream stream = OpenStream(path, FileMode.Open);
            stream.Seek(0, SeekOrigin.End);
            string id = "";
            try
            {
                using (var read = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
                {
                    var head = new byte[64 * 1024];
                    int n = read.Read(head, 0, head.Length);
                    int nl = Array.IndexOf(head, (byte)'\n', 0, n);
                    if (nl >= 0)
                        id = Convert.ToBase64String(head, 0, nl + 1);
                }
            }
            catch (IOException) { }
            return new ManagedSink(stream, path, id);
        }

        public override void Link(string from, string to) { throw new FsException("EOPNOTSUPP", "no hard links without libc"); }

        public override void Rename(string from, string to)
        {
            if (!File.Exists(from))
                throw new FsException("ENOENT", "rename " + from + ": no such file");
            File.Move(from, to);
        }

        public override void UnlinkIfPresent(string path)
        {
            if (Directory.Exists(path))
                throw new FsException("EISDIR", "unlink " + path + ": is a directory");
            File.Delete(path); // no error when it does not exist
        }

        public override long Uid() { return -1; }

        public override bool Lstat(string path, out long uid, out bool regular, out double mtime)
        {
            uid = -1;
            regular = false;
            mtime = 0;
            try
            {
                var attrs = File.GetAttributes(path);
                regular = (attrs & (FileAttributes.Directory | FileAttributes.ReparsePoint | FileAttributes.Device)) == 0;
                mtime = (File.GetLastWriteTimeUtc(path) - new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc)).TotalSeconds;
                return true;
            }
            catch (Exception) { return false; }
        }

        public override byte[] ReadHead(string path, int max)
        {
            try
            {
                using (var read = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
                {
                    var buf = new byte[max];
                    int n = read.Read(buf, 0, max);
                    Array.Resize(ref buf, n);
                    return buf;
                }
            }
            catch (Exception) { return null; }
        }
    }

    // ----- one file: exclusive creation, whole-line writes, rotation under the cap -----------------------

    sealed class LogFile
    {
        public const string FilePrefix = "dvic_log_";
        const string RotatedSuffix = ".1";
        // A rotation prepares the next file under this name, then renames it over the live path.
        const string PrepareSuffix = ".new";
        const int TokenAttempts = 16;
        const long VanishCheckMs = 1000;
        const long HeartbeatMinIntervalMs = 1000;
        // Room kept for the '"rotated":N' field later headers add: keeps every record under the cap.
        const int RotatedFieldSlack = 24;
        static readonly System.Security.Cryptography.RandomNumberGenerator random = System.Security.Cryptography.RandomNumberGenerator.Create();
        [ThreadStatic] static Bytes lineBuffer;

        readonly object gate = new object();
        readonly FileSystem fs;
        public readonly string Name;
        public readonly string Directory;
        public readonly long MaxBytes;
        Identity identity;
        string token;
        long startMs;
        int rotated;
        long size;
        long maxLine;
        Sink sink;
        bool closed;
        string closedId;
        byte[] pending; // the rest of a line a full disk cut short, written before the next record
        long nextVanishCheck;
        long lastHeartbeat = long.MinValue;

        LogFile(string name, string directory, long maxBytes, FileSystem fs)
        {
            Name = name;
            Directory = directory;
            MaxBytes = maxBytes;
            this.fs = fs;
        }

        public string Token { get { lock (gate) return token; } }
        public string Path { get { lock (gate) return PathOf(token); } }

        string PathOf(string tok) { return System.IO.Path.Combine(Directory, FilePrefix + tok); }

        public static LogFile Open(string name, LoggerOptions options)
        {
            string directory = Config.ResolveDir(options.Directory);
            long maxBytes = Config.ResolveMaxBytes(options.MaxBytes);
            double keepSeconds = Config.ResolveKeepSeconds(options.KeepDays);
            var file = new LogFile(name, directory, maxBytes, FileSystem.Get());
            file.identity = file.FitIdentity(Identity.Current());
            lock (file.gate)
                file.OpenStream();
            Prune.Once(directory, keepSeconds, file.fs);
            return file;
        }

        /// <summary>Append one record; when this returns the whole line is in the file. Throws on failure.</summary>
        public void WriteRecord(Record record)
        {
            Bytes b = lineBuffer ?? (lineBuffer = new Bytes());
            Json.RecordLine(b, record); // outside the lock: threads only queue for the write itself
            lock (gate)
            {
                if (closed)
                    Reopen();
                if (b.Length > maxLine)
                {
                    byte[] cut = Json.FitRecord(record, maxLine);
                    Append(cut, cut.Length);
                }
                else
                {
                    Append(b.Data, b.Length);
                }
            }
            if (b.Data.Length > 1 << 20)
                lineBuffer = null; // do not keep a huge buffer for the thread's lifetime
        }

        /// <summary>A heartbeat record, at most one per second; returns whether one was written.</summary>
        public bool Heartbeat()
        {
            long now = Clock.MonotonicMs();
            lock (gate)
            {
                if (closed)
                    Reopen();
                if (lastHeartbeat != long.MinValue && now - lastHeartbeat < HeartbeatMinIntervalMs)
                    return false;
                byte[] line = Json.HeartbeatLine(Clock.NowMs());
                Append(line, line.Length);
                lastHeartbeat = now;
                return true;
            }
        }

        public void Close()
        {
            lock (gate)
            {
                if (closed)
                    return;
                try
                {
                    if (pending != null)
                        FinishPending();
                }
                catch (Exception)
                {
                    // still no room: the reader will see the incomplete last line
                }
                closed = true;
                try { closedId = sink.FileId(); }
                catch (Exception) { closedId = null; }
                sink.Close();
            }
        }

        // ----- internals (called with the lock held) -----------------------------------------------------

        void Append(byte[] line, int count)
        {
            CheckVanished();
            if (pending != null)
                FinishPending();
            if (size + count > MaxBytes)
                Rotate();
            WriteLine(line, count);
        }

        void Reopen()
        {
            Sink again = null;
            try { again = fs.OpenAppend(PathOf(token)); }
            catch (Exception) { again = null; }
            if (again == null || closedId == null || again.FileId() != closedId)
            {
                if (again != null)
                    again.Close(); // not the file we closed (rotated away, replaced): start afresh
                OpenStream();
                return;
            }
            sink = again;
            size = again.Size();
            closed = false;
        }

        byte[] Header(int rot)
        {
            return Json.HeaderLine(token, Name, identity, startMs, rot);
        }

        /// <summary>Shorten argv and exe until the header takes at most a quarter of the cap (Python's rule).</summary>
        Identity FitIdentity(Identity id)
        {
            long budget = MaxBytes / 4;
            Identity fitted = id;
            int[][] steps = { null, new[] { 16, 64 }, new[] { 4, 32 }, new[] { 1, 32 }, new[] { 0, 0 } };
            foreach (int[] step in steps)
            {
                if (Json.HeaderLine(new string('0', 16), Name, fitted, Clock.NowMs(), 1000000000).Length <= budget)
                    break;
                string[] argv = id.Argv;
                if (step != null)
                {
                    var kept = new List<string>();
                    for (int i = 0; i < argv.Length && i < step[0]; i++)
                        kept.Add(Json.FirstChars(argv[i], step[1]));
                    if (argv.Length > step[0])
                        kept.Add("... (" + (argv.Length - step[0]) + " more arguments)");
                    argv = kept.ToArray();
                }
                fitted = id.Copy();
                fitted.Argv = argv;
                fitted.Exe = Json.FirstChars(id.Exe, 256);
            }
            return fitted;
        }

        static string NewToken()
        {
            var bytes = new byte[8];
            lock (random)
                random.GetBytes(bytes);
            var sb = new StringBuilder(16);
            foreach (byte x in bytes)
                sb.Append(x.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }

        /// <summary>Start a new stream: new token, new file, header with rotated = 0.</summary>
        void OpenStream()
        {
            startMs = Clock.NowMs();
            rotated = 0;
            pending = null;
            Exception last = null;
            for (int attempt = 0; attempt < TokenAttempts; attempt++)
            {
                token = NewToken();
                byte[] header = Header(0);
                Sink created;
                try
                {
                    created = fs.Create(PathOf(token), header);
                }
                catch (FsException err)
                {
                    if (err.Code != "EEXIST")
                        throw;
                    last = err; // a token collision or a name planted in advance
                    continue;
                }
                Sink old = sink;
                sink = created;
                closed = false;
                size = header.Length;
                maxLine = MaxBytes - header.Length - RotatedFieldSlack;
                nextVanishCheck = Clock.MonotonicMs() + VanishCheckMs;
                if (old != null)
                    old.Close();
                return;
            }
            throw new IOException("dvic_log: no free file name after " + TokenAttempts + " attempts in " + Directory, last);
        }

        void WriteLine(byte[] line, int count)
        {
            int written = sink.Write(line, count);
            size += written;
            if (written != count)
            {
                // Disk full or file size limit: part of the line is on disk. Keep the rest and write it
                // first next time, so the file stays append-only and the line ends up whole.
                pending = new byte[count - written];
                Buffer.BlockCopy(line, written, pending, 0, pending.Length);
                throw new FsException("ENOSPC", "dvic_log: no room in " + PathOf(token) + ": " + written + " of " + count +
                    " bytes of the record written, the rest follows before the next record");
            }
        }

        void FinishPending()
        {
            while (pending != null)
            {
                int written = sink.Write(pending, pending.Length);
                size += written;
                if (written == pending.Length)
                {
                    pending = null;
                }
                else
                {
                    var rest = new byte[pending.Length - written];
                    Buffer.BlockCopy(pending, written, rest, 0, rest.Length);
                    pending = rest;
                    if (written == 0)
                        throw new FsException("ENOSPC", "dvic_log: still no room in " + PathOf(token));
                }
            }
        }

        /// <summary>If the file was deleted under us, start a fresh one at the same path (as a rotation).</summary>
        void CheckVanished()
        {
            long now = Clock.MonotonicMs();
            if (now < nextVanishCheck)
                return;
            nextVanishCheck = now + VanishCheckMs;
            if (sink.StillLinked())
                return;
            pending = null; // the unfinished line went away with the deleted file
            int next = rotated + 1;
            byte[] header = Header(next);
            Sink created;
            try
            {
                created = fs.Create(PathOf(token), header);
            }
            catch (FsException err)
            {
                if (err.Code != "EEXIST")
                    throw;
                OpenStream(); // something else took the name: continue under a new token
                return;
            }
            Adopt(created, header.Length, next);
        }

        void Adopt(Sink created, int headerLength, int rot)
        {
            Sink old = sink;
            sink = created;
            size = headerLength;
            rotated = rot;
            if (old != null)
                old.Close();
        }

        /// <summary>
        /// Move the live file to .1 and continue in a fresh file: prepared under .new, the full file gets the
        /// second name .1 (a hard link), .new is renamed over the live name, so the live name never
        /// disappears. Without hard links: rename live to .1 and create the live name again; if .1 is
        /// unusable too, go on under a new token. A full disk is reported, not worked around.
        /// </summary>
        void Rotate()
        {
            int next = rotated + 1;
            byte[] header = Header(next);
            Sink created;
            try
            {
                created = RotateWithLink(header);
            }
            catch (Exception err)
            {
                if (err is FsException && ((FsException)err).NoRoom)
                    throw;
                try
                {
                    created = RotateWithRename(header);
                }
                catch (Exception err2)
                {
                    if (err2 is FsException && ((FsException)err2).NoRoom)
                        throw;
                    OpenStream();
                    return;
                }
            }
            Adopt(created, header.Length, next);
        }

        Sink RotateWithLink(byte[] header)
        {
            string live = PathOf(token);
            string prepared = live + PrepareSuffix;
            fs.UnlinkIfPresent(prepared); // left over by a crash in the middle of an earlier rotation
            Sink created = fs.Create(prepared, header);
            try
            {
                string backup = live + RotatedSuffix;
                fs.UnlinkIfPresent(backup);
                fs.Link(live, backup);
                fs.Rename(prepared, live);
            }
            catch (Exception)
            {
                created.Close();
                try { fs.UnlinkIfPresent(prepared); }
                catch (Exception) { }
                throw;
            }
            return created;
        }

        Sink RotateWithRename(byte[] header)
        {
            string live = PathOf(token);
            string backup = live + RotatedSuffix;
            fs.UnlinkIfPresent(backup);
            try
            {
                fs.Rename(live, backup);
            }
            catch (FsException err)
            {
                if (err.Code != "ENOENT")
                    throw; // deleted under us: nothing to keep
            }
            return fs.Create(live, header);
        }
    }

    // ----- retention: this user's files whose writer exited long ago ----------------------------------

    static class Prune
    {
        static readonly Regex fileName = new Regex(@"^dvic_log_[0-9a-f]{16}(\.1|\.new)?$");
        const int HeaderBytes = 64 * 1024;
        const int MaxEntries = 20000;
        static readonly HashSet<string> done = new HashSet<string>();

        /// <summary>At most once per process and directory; never throws.</summary>
        public static void Once(string directory, double keepSeconds, FileSystem fs)
        {
            if (keepSeconds <= 0)
                return;
            string key;
            try { key = System.IO.Path.GetFullPath(directory); }
            catch (Exception) { key = directory; }
            lock (done)
            {
                if (!done.Add(key))
                    return;
            }
            try { Stale(directory, keepSeconds, fs); }
            catch (Exception) { } // retention is housekeeping: it must never break a demo's logging
        }

        public static int Stale(string directory, double keepSeconds, FileSystem fs)
        {
            double now = Clock.NowMs() / 1000.0;
            long uid = fs.Uid();
            string me = Identity.Current().User;
            int removed = 0;
            int count = 0;
            foreach (string path in System.IO.Directory.EnumerateFileSystemEntries(directory))
            {
                if (count++ >= MaxEntries)
                    break;
                if (!fileName.IsMatch(System.IO.Path.GetFileName(path)))
                    continue;
                long owner;
                bool regular;
                double mtime;
                if (!fs.Lstat(path, out owner, out regular, out mtime) || !regular || now - mtime < keepSeconds)
                    continue;
                if (uid >= 0 && owner != uid)
                    continue;
                Dictionary<string, string> header = ReadHeader(path, fs);
                // Without file owners (managed fallback) the header's user stands in for the owner.
                if (uid < 0 && (header == null || !header.ContainsKey("user") || header["user"] != me))
                    continue;
                if (header != null && WriterAlive(header))
                    continue; // an idle demo still running keeps its file
                try
                {
                    fs.UnlinkIfPresent(path);
                    removed++;
                }
                catch (Exception) { } // gone already, or not ours to remove after all
            }
            return removed;
        }

        /// <summary>The pid, pid_start and user of a header, or null if the first line is not one.</summary>
        static Dictionary<string, string> ReadHeader(string path, FileSystem fs)
        {
            byte[] head = fs.ReadHead(path, HeaderBytes);
            if (head == null)
                return null;
            int nl = Array.IndexOf(head, (byte)'\n');
            string first = Json.DecodeUtf8(nl < 0 ? head : SubArray(head, nl));
            if (!first.TrimStart().StartsWith("{", StringComparison.Ordinal))
                return null; // not a JSON object: a writer that counts as gone, as in Python
            var fields = new Dictionary<string, string>();
            foreach (string key in new[] { "pid", "pid_start" })
            {
                Match m = Regex.Match(first, "[{,]\\s*\"" + key + "\"\\s*:\\s*(-?[0-9]+|null)\\s*[,}]");
                if (m.Success)
                    fields[key] = m.Groups[1].Value;
            }
            Match user = Regex.Match(first, "[{,]\\s*\"user\"\\s*:\\s*\"((?:[^\"\\\\]|\\\\.)*)\"");
            if (user.Success)
                fields["user"] = Regex.Unescape(user.Groups[1].Value);
            return fields;
        }

        static byte[] SubArray(byte[] data, int length)
        {
            var out_ = new byte[length];
            Buffer.BlockCopy(data, 0, out_, 0, length);
            return out_;
        }

        /// <summary>Whether the writer a header names still runs (same pid and same start time).</summary>
        static bool WriterAlive(Dictionary<string, string> header)
        {
            int pid;
            if (!header.ContainsKey("pid") || !int.TryParse(header["pid"], out pid) || pid <= 0)
                return false;
            long start;
            if (header.ContainsKey("pid_start") && long.TryParse(header["pid_start"], out start))
            {
                long? now = Identity.ReadPidStart(pid);
                return now.HasValue && now.Value == start;
            }
            try
            {
                using (System.Diagnostics.Process.GetProcessById(pid))
                    return true; // no start time to compare: a live pid counts as alive, to be safe
            }
            catch (Exception) { return false; }
        }
    }

#if UNITY_5_3_OR_NEWER || DVIC_LOG_UNITY
    /// <summary>
    /// Sends Unity's Debug.Log / LogWarning / LogError / LogException to a demo log, and on to Unity's
    /// own handler (the Console window, the player log). Install once, e.g. from a MonoBehaviour's Awake:
    /// <code>DvicLog.UnityLogHandler.Install("my-installation");</code>
    /// Log -> INFO, Warning -> WARNING, Error and Assert -> ERROR, Exception -> ERROR with the stack in "exc".
    /// </summary>
    public sealed class UnityLogHandler : UnityEngine.ILogHandler
    {
        readonly Logger log;
        readonly UnityEngine.ILogHandler next;

        public UnityLogHandler(Logger log, UnityEngine.ILogHandler next)
        {
            this.log = log;
            this.next = next;
        }

        /// <summary>The logger records go to.</summary>
        public Logger Logger { get { return log; } }

        /// <summary>Route Debug.unityLogger through a new handler for demo `name`; returns it.</summary>
        public static UnityLogHandler Install(string name)
        {
            var current = UnityEngine.Debug.unityLogger.logHandler as UnityLogHandler;
            if (current != null && current.log.DemoName == Config.CheckName(name))
                return current;
            var handler = new UnityLogHandler(Logger.Get(name), UnityEngine.Debug.unityLogger.logHandler);
            UnityEngine.Debug.unityLogger.logHandler = handler;
            return handler;
        }

        /// <summary>Give Debug.unityLogger its previous handler back.</summary>
        public void Uninstall()
        {
            if (UnityEngine.Debug.unityLogger.logHandler == this)
                UnityEngine.Debug.unityLogger.logHandler = next;
        }

        public void LogFormat(UnityEngine.LogType logType, UnityEngine.Object context, string format, params object[] args)
        {
            string msg;
            try { msg = args == null || args.Length == 0 ? format : string.Format(CultureInfo.InvariantCulture, format, args); }
            catch (FormatException) { msg = format; }
            log.Write(Map(logType), msg, (string)null);
            if (next != null)
                next.LogFormat(logType, context, format, args);
        }

        public void LogException(Exception exception, UnityEngine.Object context)
        {
            log.Log(Level.Error, exception.GetType().Name + ": " + exception.Message, exception);
            if (next != null)
                next.LogException(exception, context);
        }

        static Level Map(UnityEngine.LogType type)
        {
            switch (type)
            {
                case UnityEngine.LogType.Error:
                case UnityEngine.LogType.Assert:
                case UnityEngine.LogType.Exception:
                    return Level.Error;
                case UnityEngine.LogType.Warning:
                    return Level.Warning;
                default:
                    return Level.Info;
            }
        }
    }
#endif
}
