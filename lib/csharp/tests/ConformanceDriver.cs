// Conformance driver of the C# library (tests/conformance/README.md):
//   mcs -out:driver.exe lib/csharp/DvicLog.cs lib/csharp/tests/ConformanceDriver.cs Json.cs
//   mono driver.exe SCRIPT.json
// Runs the script's ops through the demo-facing API: Logger.Get(name), log.Info(msg) ...,
// log.Child(suffix) for named loggers, log.Heartbeat(), log.Close(). Raw bytes (msg_hex) go through
// log.Write(level, byte[]), an explicit traceback (exc) through log.Write(level, msg, exc).
// The threads op runs real threads; C# has no fork, so that op is skipped.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;
using DvicLog;

static class ConformanceDriver
{
    static readonly HashSet<string> capabilities = new HashSet<string> { "bytes", "surrogates", "threads" };

    static string Template(string text, Dictionary<string, long> values)
    {
        foreach (var kv in values)
            text = text.Replace("{" + kv.Key + "}", kv.Value.ToString());
        return text;
    }

    static Level LevelOf(string name)
    {
        switch (name)
        {
            case "DEBUG": return Level.Debug;
            case "INFO": return Level.Info;
            case "WARNING": return Level.Warning;
            case "ERROR": return Level.Error;
            case "CRITICAL": return Level.Critical;
            default: throw new ArgumentException("unknown level " + name);
        }
    }

    static Logger LoggerFor(Logger log, Dictionary<string, object> op)
    {
        string name = MiniJson.Str(op, "logger");
        if (name == null)
            return log;
        string prefix = log.DemoName + ".";
        if (!name.StartsWith(prefix, StringComparison.Ordinal))
            throw new ArgumentException("logger " + name + " is not under " + log.DemoName);
        return log.Child(name.Substring(prefix.Length));
    }

    static void Plain(Logger log, Level level, string msg)
    {
        switch (level)
        {
            case Level.Debug: log.Debug(msg); break;
            case Level.Info: log.Info(msg); break;
            case Level.Warning: log.Warning(msg); break;
            case Level.Error: log.Error(msg); break;
            default: log.Critical(msg); break;
        }
    }

    static void Write(Logger log, Dictionary<string, object> op, string msg)
    {
        Logger target = LoggerFor(log, op);
        Level level = LevelOf(MiniJson.Str(op, "level"));
        string hex = MiniJson.Str(op, "msg_hex");
        string exc = MiniJson.Str(op, "exc");
        if (hex != null)
        {
            var bytes = new byte[hex.Length / 2];
            for (int i = 0; i < bytes.Length; i++)
                bytes[i] = Convert.ToByte(hex.Substring(2 * i, 2), 16);
            target.Write(level, bytes, exc);
        }
        else if (exc != null)
        {
            target.Write(level, msg, exc);
        }
        else
        {
            Plain(target, level, msg);
        }
    }

    static string Message(Dictionary<string, object> op)
    {
        string msg = MiniJson.Str(op, "msg") ?? "";
        long repeat = MiniJson.Num(op, "repeat", 1);
        if (repeat <= 1)
            return msg;
        var sb = new StringBuilder(msg.Length * (int)repeat);
        for (long i = 0; i < repeat; i++)
            sb.Append(msg);
        return sb.ToString();
    }

    static void Threads(Logger log, Dictionary<string, object> op)
    {
        int count = (int)MiniJson.Num(op, "threads", 0);
        long records = MiniJson.Num(op, "count", 0);
        string msg = MiniJson.Str(op, "msg");
        var start = new Barrier(count);
        var threads = new List<Thread>();
        for (int t = 0; t < count; t++)
        {
            int id = t;
            var thread = new Thread(() =>
            {
                start.SignalAndWait();
                for (long i = 0; i < records; i++)
                    log.Info(Template(msg, new Dictionary<string, long> { { "t", id }, { "i", i } }));
            });
            thread.Start();
            threads.Add(thread);
        }
        foreach (var thread in threads)
            thread.Join();
    }

    static List<int> Run(List<object> ops)
    {
        var logs = new Dictionary<string, Logger>();
        var skipped = new List<int>();
        for (int index = 0; index < ops.Count; index++)
        {
            var op = (Dictionary<string, object>)ops[index];
            string requires = MiniJson.Str(op, "requires");
            if (requires != null && !capabilities.Contains(requires))
            {
                skipped.Add(index);
                continue;
            }
            string handle = MiniJson.Str(op, "log");
            Logger log;
            logs.TryGetValue(handle ?? "", out log);
            switch (MiniJson.Str(op, "op"))
            {
                case "open":
                    logs[handle] = Logger.Get(MiniJson.Str(op, "name"));
                    break;
                case "write":
                    Write(log, op, Message(op));
                    break;
                case "write_many":
                    long n = MiniJson.Num(op, "count", 0);
                    for (long i = 0; i < n; i++)
                        Write(log, op, Template(MiniJson.Str(op, "msg"), new Dictionary<string, long> { { "i", i } }));
                    break;
                case "heartbeat":
                    log.Heartbeat();
                    break;
                case "threads":
                    Threads(log, op);
                    break;
                case "close":
                    log.Close();
                    break;
                default:
                    break; // unknown ops and keys are ignored (README)
            }
        }
        return skipped;
    }

    static int Main(string[] args)
    {
        List<object> ops;
        try
        {
            var script = (Dictionary<string, object>)MiniJson.Parse(File.ReadAllText(args[0], Encoding.UTF8));
            ops = (List<object>)script["ops"];
        }
        catch (Exception err)
        {
            Console.Error.WriteLine("ConformanceDriver: cannot read the script: " + err.Message);
            return 2;
        }
        List<int> skipped = Run(ops);
        int pid;
        using (var me = Process.GetCurrentProcess())
            pid = me.Id;
        Console.Out.Write("{\"pid\": " + pid + ", \"skipped\": [" + string.Join(", ", skipped) + "]}\n");
        Console.Out.Flush();
        return 0;
    }
}
