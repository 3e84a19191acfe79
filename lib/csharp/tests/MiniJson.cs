// A small JSON reader for the C# test programs (.NET Standard 2.0 has none). Objects become
// Dictionary<string, object>, arrays List<object>, numbers double, and \uXXXX escapes are kept as the
// UTF-16 units they name, lone surrogates included (the conformance script uses them on purpose).

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

static class MiniJson
{
    public static object Parse(string text)
    {
        int i = 0;
        object value = Value(text, ref i);
        Space(text, ref i);
        if (i != text.Length)
            throw new FormatException("extra text at " + i);
        return value;
    }

    public static string Str(Dictionary<string, object> obj, string key)
    {
        object value;
        return obj.TryGetValue(key, out value) ? value as string : null;
    }

    public static long Num(Dictionary<string, object> obj, string key, long fallback)
    {
        object value;
        return obj.TryGetValue(key, out value) && value is double ? (long)(double)value : fallback;
    }

    static void Space(string s, ref int i)
    {
        while (i < s.Length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            i++;
    }

    static object Value(string s, ref int i)
    {
        Space(s, ref i);
        if (i >= s.Length)
            throw new FormatException("unexpected end");
        char c = s[i];
        if (c == '{')
        {
            var obj = new Dictionary<string, object>();
            if (Opens(s, ref i, '}'))
            {
                do
                {
                    Space(s, ref i);
                    string key = String(s, ref i);
                    Space(s, ref i);
                    Expect(s, ref i, ':');
                    obj[key] = Value(s, ref i);
                } while (More(s, ref i, '}'));
            }
            return obj;
        }
        if (c == '[')
        {
            var list = new List<object>();
            if (Opens(s, ref i, ']'))
            {
                do
                    list.Add(Value(s, ref i));
                while (More(s, ref i, ']'));
            }
            return list;
        }
        if (c == '"')
            return String(s, ref i);
        if (s.Substring(i).StartsWith("true", StringComparison.Ordinal)) { i += 4; return true; }
        if (s.Substring(i).StartsWith("false", StringComparison.Ordinal)) { i += 5; return false; }
        if (s.Substring(i).StartsWith("null", StringComparison.Ordinal)) { i += 4; return null; }
        int start = i;
        while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0)
            i++;
        return double.Parse(s.Substring(start, i - start), NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    // Past an opening bracket: false when the container closes at once (empty), else true.
    static bool Opens(string s, ref int i, char close)
    {
        i++;
        Space(s, ref i);
        if (i < s.Length && s[i] == close)
        {
            i++;
            return false;
        }
        return true;
    }

    // After a member or an element: true at a comma (another follows), false at the closing bracket.
    static bool More(string s, ref int i, char close)
    {
        Space(s, ref i);
        if (i < s.Length && s[i] == ',')
        {
            i++;
            return true;
        }
        Expect(s, ref i, close);
        return false;
    }

    static void Expect(string s, ref int i, char c)
    {
        if (i >= s.Length || s[i] != c)
            throw new FormatException("expected '" + c + "' at " + i);
        i++;
    }

    static string String(string s, ref int i)
    {
        Expect(s, ref i, '"');
        var sb = new StringBuilder();
        while (s[i] != '"')
        {
            char c = s[i++];
            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }
            char e = s[i++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 'r': sb.Append('\r'); break;
                case 't': sb.Append('\t'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'u':
                    sb.Append((char)int.Parse(s.Substring(i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 4;
                    break;
                default: sb.Append(e); break;
            }
        }
        i++;
        return sb.ToString();
    }
}
